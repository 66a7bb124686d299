"""Template filter for money in minor units."""

from django import template

from billing.money import format_cents

register = template.Library()


@register.filter
def cents(value: int | None) -> str:
    """``1234`` → ``$12.34``."""
    return format_cents(int(value or 0))
