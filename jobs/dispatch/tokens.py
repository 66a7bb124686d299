"""Contributors and their worker tokens: anonymous devices, accounts, claims, private pools.

A token is a signed ``(contributor, token_version)`` pair; bumping the version revokes every token
the contributor holds.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core import signing
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from jobs.models import Assignment, Contributor, Worker
from tenants.services import audit_record

TOKEN_SALT = "ccgsc.worker-token"  # noqa: S105 - a signing namespace, not a secret


def worker_token_issue(*, contributor: Contributor) -> str:
    """A signed worker token for ``contributor``; revoked by bumping its token_version."""
    return signing.dumps(
        {"c": str(contributor.pk), "v": contributor.token_version}, salt=TOKEN_SALT, compress=True
    )


def worker_token_read(*, token: str) -> tuple[uuid.UUID, int] | None:
    """The (contributor id, token version) a token was signed for, or None if it is forged.

    No database: a batch of hellos checks signatures in the consumer and the contributors in one
    query (revoked and banned are decided there)."""
    try:
        payload = signing.loads(token, salt=TOKEN_SALT)
        return uuid.UUID(payload["c"]), int(payload["v"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None


def token_current(contributor: Contributor | None, version: int) -> bool:
    """Whether a signed token of ``version`` still stands for ``contributor`` (not revoked,
    not banned)."""
    return (
        contributor is not None
        and not contributor.is_banned
        and contributor.token_version == version
    )


def worker_token_verify(*, token: str) -> Contributor | None:
    """The contributor a token belongs to, or None if it is forged, revoked or banned."""
    signed = worker_token_read(token=token)
    if signed is None:
        return None
    contributor_id, version = signed
    contributor = Contributor.objects.filter(pk=contributor_id).first()
    return contributor if token_current(contributor, version) else None


@transaction.atomic
def contributor_create_anonymous() -> tuple[Contributor, str]:
    """A new anonymous device contributor and its token."""
    contributor = Contributor.objects.create()
    return contributor, worker_token_issue(contributor=contributor)


@transaction.atomic
def contributor_for_user(*, user: Any) -> Contributor:
    """The signed-in user's contributor, created on first use."""
    contributor, _ = Contributor.objects.get_or_create(
        user=user, defaults={"claimed_at": timezone.now()}
    )
    return contributor


@transaction.atomic
def contributor_claim(*, user: Any, token: str) -> Contributor:
    """Attach an anonymous device's work to the signed-in user's contributor.

    The device's workers and validated counters move to the user's contributor; the device token
    is revoked (its version bumped) so it cannot keep earning anonymously. A tenant's private-pool
    worker belongs to that tenant, not to whoever learns its token: it cannot be claimed.
    """
    device = worker_token_verify(token=token)
    if device is None:
        raise ValueError("This worker token is invalid or revoked.")
    if device.pool_tenant_id is not None:
        raise ValueError(
            "This token belongs to an organisation's private worker pool and cannot be claimed."
        )
    device = Contributor.objects.select_for_update().get(pk=device.pk)
    mine = Contributor.objects.filter(user=user).select_for_update().first()
    if device.user_id is not None:
        if device.user_id == user.pk:
            return device
        raise ValueError("This device already belongs to another account.")
    if mine is None:
        device.user = user
        device.claimed_at = timezone.now()
        device.save(update_fields=["user", "claimed_at"])
        return device
    Worker.objects.filter(contributor=device).update(contributor=mine)
    Assignment.objects.unscoped().filter(contributor=device).update(contributor=mine)
    Contributor.objects.filter(pk=mine.pk).update(
        validated_replicas=F("validated_replicas") + device.validated_replicas,
        validated_work_units=F("validated_work_units") + device.validated_work_units,
    )
    device.token_version += 1
    device.validated_replicas = 0
    device.validated_work_units = 0
    device.save(update_fields=["token_version", "validated_replicas", "validated_work_units"])
    mine.refresh_from_db()
    return mine


@transaction.atomic
def pool_worker_register(*, tenant: Any, actor: Any, name: str) -> tuple[Contributor, str]:
    """Register a worker of the tenant's private pool (Enterprise); returns it and its token."""
    if not tenant.policy.private_worker_pools:
        raise PermissionDenied(
            f"Private worker pools are part of FL Enterprise, not {tenant.policy.label}."
        )
    contributor = Contributor.objects.create(
        pool_tenant=tenant, display_name=name[:80] or "pool worker"
    )
    audit_record(
        tenant=tenant, actor=actor, action="pool_worker.registered", target=contributor.display_name
    )
    return contributor, worker_token_issue(contributor=contributor)


@transaction.atomic
def contributor_revoke_tokens(*, contributor: Contributor) -> Contributor:
    """Invalidate every token of a contributor (new ones can be issued)."""
    Contributor.objects.filter(pk=contributor.pk).update(token_version=F("token_version") + 1)
    contributor.refresh_from_db()
    return contributor
