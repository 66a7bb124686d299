"""Reads of tenant data. Every selector takes the tenant first; a miss raises Http404."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404

from tenants.models import ApiKey, AuditEvent, Invitation, Membership, Tenant, User


def membership_list_for_user(*, user: User) -> QuerySet[Membership]:
    """The tenants a user belongs to (the only cross-tenant read a user may make: their own)."""
    return (
        Membership.objects.unscoped()
        .filter(user=user, tenant__status="active")
        .select_related("tenant")
        .order_by("tenant__name")
    )


def membership_get_for_user(*, user: User, tenant_id: uuid.UUID | str) -> Membership:
    """The user's membership in ``tenant_id``; Http404 if they have none or the id is malformed."""
    try:
        return membership_list_for_user(user=user).get(tenant_id=tenant_id)
    # A malformed id is as absent as another tenant's: the UUID field raises ValidationError.
    except (Membership.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise Http404("No such tenant") from exc


def membership_list(*, tenant: Tenant) -> QuerySet[Membership]:
    """Members of a tenant."""
    return Membership.objects.for_tenant(tenant).select_related("user").order_by("created_at")


def membership_get(*, tenant: Tenant, membership_id: uuid.UUID) -> Membership:
    """One membership of ``tenant``."""
    return _get_or_404(membership_list(tenant=tenant), membership_id)


def invitation_list(*, tenant: Tenant) -> QuerySet[Invitation]:
    """A tenant's invitations, newest first."""
    return Invitation.objects.for_tenant(tenant).select_related("invited_by")


def invitation_get(*, tenant: Tenant, invitation_id: uuid.UUID) -> Invitation:
    """One invitation of ``tenant``."""
    return _get_or_404(invitation_list(tenant=tenant), invitation_id)


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    """A tenant's API keys, newest first."""
    return ApiKey.objects.for_tenant(tenant).select_related("created_by")


def api_key_get(*, tenant: Tenant, api_key_id: uuid.UUID) -> ApiKey:
    """One API key of ``tenant``."""
    return _get_or_404(api_key_list(tenant=tenant), api_key_id)


def audit_event_list(*, tenant: Tenant) -> QuerySet[AuditEvent]:
    """A tenant's audit trail, newest first."""
    return AuditEvent.objects.filter(tenant=tenant).select_related("actor")


def _get_or_404(queryset: QuerySet, pk: object):  # noqa: ANN202 - model type varies
    try:
        return queryset.get(pk=pk)
    except (queryset.model.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise Http404(f"No such {queryset.model._meta.verbose_name}") from exc
