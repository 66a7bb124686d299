"""Template context: the active tenant and the user's other tenants."""

from __future__ import annotations

from django.http import HttpRequest

from tenants.selectors import membership_list_for_user


def active_tenant(request: HttpRequest) -> dict[str, object]:
    """Expose the active membership and the tenant switcher's choices."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    membership = getattr(request, "active_membership", None)
    return {
        "active_membership": membership if membership else None,
        "user_memberships": membership_list_for_user(user=user),
    }
