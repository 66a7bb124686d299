"""Administrators' money operations: refunds of top-ups and balance adjustments, audited."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db import transaction

from billing import ledger, stripe_gateway
from billing.ledger import Line
from billing.models import AccountKind, EntryKind, JournalEntry, Posting
from billing.money import format_cents
from tenants.models import Tenant, User
from tenants.services import audit_record


def refund_post(
    *, topup: JournalEntry, refund_id: str, amount_cents: int, actor: User | None, reason: str
) -> tuple[JournalEntry, bool]:
    """Mirror one refund of a top-up in the ledger, once per refund id; returns (entry, created)."""
    tenant = topup.tenant
    return ledger.entry_post(
        key=f"refund:{refund_id}",
        kind=EntryKind.REFUND,
        tenant=tenant,
        created_by=actor,
        external_ref=refund_id,
        parent=topup,
        memo=f"refund {format_cents(amount_cents)}: {reason}",
        lines=[
            Line(ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant), -amount_cents),
            Line(ledger.account_get(AccountKind.STRIPE_CLEARING), amount_cents),
        ],
    )


def topup_refunded_cents(*, topup: JournalEntry) -> tuple[int, int]:
    """(topped up, refunded so far) of a top-up entry, in cents."""
    topped = sum(
        p.amount_cents for p in topup.postings.filter(account__kind=AccountKind.TENANT_BALANCE)
    )
    refunded = sum(
        -p.amount_cents
        for p in Posting.objects.filter(
            entry__parent=topup,
            entry__kind=EntryKind.REFUND,
            account__kind=AccountKind.TENANT_BALANCE,
        )
    )
    return topped, refunded


@transaction.atomic
def refund_issue(
    *, topup: JournalEntry, amount_cents: int, actor: User, reason: str
) -> JournalEntry:
    """Admin refund of (part of) a top-up: through Stripe when live, then one ledger entry."""
    if topup.kind != EntryKind.TOPUP:
        raise ValidationError("Only top-ups can be refunded.")
    topup = JournalEntry.objects.select_for_update().get(pk=topup.pk)  # serialises refunds of it
    topped, refunded = topup_refunded_cents(topup=topup)
    if not 0 < amount_cents <= topped - refunded:
        raise ValidationError(f"Refund between 1 and {topped - refunded} cents.")
    client = stripe_gateway.gateway()
    key = f"{topup.pk}-{refunded}-{amount_cents}"
    refund_id = (
        client.refund_create(
            payment_intent=topup.external_ref, amount_cents=amount_cents, refund_key=key
        )
        if client and topup.external_ref
        else f"local-{key}"
    )
    entry, _ = refund_post(
        topup=topup, refund_id=refund_id, amount_cents=amount_cents, actor=actor, reason=reason
    )
    audit_record(
        tenant=topup.tenant,
        actor=actor,
        action="billing.refund",
        target=str(topup.pk),
        amount_cents=amount_cents,
        reason=reason,
    )
    return entry


@transaction.atomic
def balance_adjust(
    *, tenant: Tenant, amount_cents: int, actor: User, reason: str, promotional: bool = False
) -> JournalEntry:
    """Admin credit adjustment or promotional credit (positive or negative), with a reason."""
    if amount_cents == 0 or not reason.strip():
        raise ValidationError("Give a non-zero amount and a reason.")
    source = AccountKind.PROMOTIONS if promotional else AccountKind.PLATFORM_REVENUE
    entry, _ = ledger.entry_post(
        key=f"adjust:{uuid.uuid4().hex}",
        kind=EntryKind.PROMOTION if promotional else EntryKind.ADJUSTMENT,
        tenant=tenant,
        created_by=actor,
        memo=reason,
        lines=[
            Line(ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant), amount_cents),
            Line(ledger.account_get(source), -amount_cents),
        ],
    )
    audit_record(
        tenant=tenant,
        actor=actor,
        action="billing.promotion" if promotional else "billing.adjustment",
        target=tenant.name,
        amount_cents=amount_cents,
        reason=reason,
    )
    return entry
