"""Roles within a tenant and what each may do, decided in one table."""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


class Action(models.TextChoices):
    VIEW = "view"
    RUN_JOBS = "run_jobs"
    MANAGE_MEMBERS = "manage_members"
    MANAGE_API_KEYS = "manage_api_keys"
    MANAGE_BILLING = "manage_billing"
    MANAGE_OWNERS = "manage_owners"


_ALLOWED: dict[str, frozenset[str]] = {
    Role.OWNER: frozenset(Action.values),
    Role.ADMIN: frozenset(
        {Action.VIEW, Action.RUN_JOBS, Action.MANAGE_MEMBERS, Action.MANAGE_API_KEYS}
    ),
    Role.MEMBER: frozenset({Action.VIEW, Action.RUN_JOBS}),
}


def role_allows(role: str, action: str) -> bool:
    """Whether a member with ``role`` may perform ``action``."""
    return action in _ALLOWED.get(role, frozenset())
