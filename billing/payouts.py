"""Contributor payouts: a request, an administrator's decision, a Stripe Connect transfer."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing import ledger
from billing.ledger import Line
from billing.models import AccountKind, EntryKind, Payout, PayoutStatus
from billing.money import format_cents
from billing.pricing import MIN_PAYOUT_CENTS
from jobs.models import Contributor
from tenants.models import User
from tenants.services import audit_record


def contributor_earnings_cents(*, contributor: Contributor) -> int:
    """A contributor's unpaid earnings."""
    return ledger.account_get(
        AccountKind.CONTRIBUTOR_EARNINGS, contributor=contributor
    ).balance_cents


@transaction.atomic
def payout_request(*, contributor: Contributor) -> Payout:
    """Ask to be paid all current earnings (above the threshold, one open request at a time)."""
    amount = contributor_earnings_cents(contributor=contributor)
    if amount < MIN_PAYOUT_CENTS:
        raise ValidationError(
            f"Payouts start at {format_cents(MIN_PAYOUT_CENTS)}; you have {format_cents(amount)}."
        )
    if Payout.objects.filter(
        contributor=contributor, status__in=[PayoutStatus.REQUESTED, PayoutStatus.HELD]
    ).exists():
        raise ValidationError("You already have a payout request open.")
    return Payout.objects.create(contributor=contributor, amount_cents=amount)


@transaction.atomic
def payout_decide(*, payout: Payout, approve: bool, actor: User, note: str = "") -> Payout:
    """Admin: approve (ledger entry, then a Stripe Connect transfer where configured) or hold."""
    payout = Payout.objects.select_for_update().get(pk=payout.pk)
    if payout.status not in (PayoutStatus.REQUESTED, PayoutStatus.HELD):
        raise ValidationError(f"This payout is already {payout.status}.")
    payout.decided_by = actor
    payout.decided_at = timezone.now()
    payout.note = note[:300]
    if not approve:
        payout.status = PayoutStatus.HELD
        payout.save(update_fields=["status", "decided_by", "decided_at", "note"])
        audit_record(
            tenant=None, actor=actor, action="billing.payout_held", target=str(payout.pk), note=note
        )
        return payout
    earnings = ledger.account_get(AccountKind.CONTRIBUTOR_EARNINGS, contributor=payout.contributor)
    entry, _ = ledger.entry_post(
        key=f"payout:{payout.pk}",
        kind=EntryKind.PAYOUT,
        created_by=actor,
        floors={earnings.pk: 0},
        memo=f"payout to {payout.contributor}",
        lines=[
            Line(earnings, -payout.amount_cents),
            Line(ledger.account_get(AccountKind.PAYOUTS), payout.amount_cents),
        ],
    )
    payout.entry = entry
    if payout.contributor.stripe_account_id:
        from billing.tasks import payout_transfer  # billing.tasks imports this module

        transaction.on_commit(lambda: payout_transfer.delay(str(payout.pk)))
    payout.status = PayoutStatus.APPROVED
    payout.save(update_fields=["status", "decided_by", "decided_at", "note", "entry"])
    audit_record(
        tenant=None,
        actor=actor,
        action="billing.payout_approved",
        target=str(payout.pk),
        amount_cents=payout.amount_cents,
    )
    return payout
