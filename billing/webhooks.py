"""Stripe webhooks: verify → store once (unique event id) → dispatch by type → handle under locks.

Every verified event is stored and answered 2xx, whatever happens next: an event that cannot be
handled (an unknown session, a wrong currency, a handler error) is marked flagged or failed with
the reason and shown to administrators, instead of answering 500 and being retried for days.
Only transient database errors answer 500, so that Stripe delivers the event again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from billing import ledger
from billing.ledger import Line
from billing.models import (
    Account,
    AccountKind,
    BillingProfile,
    EntryKind,
    JournalEntry,
    StripeEvent,
    StripeEventStatus,
)
from billing.money import CURRENCY, format_cents
from billing.operations import refund_post, topup_refunded_cents
from billing.stripe_gateway import SignatureError, webhook_event
from billing.topups import checkout_session_event

logger = logging.getLogger(__name__)

CHECKOUT_EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
)
REFUND_EVENTS = ("refund.created", "refund.updated", "refund.failed")
INVOICE_EVENTS = ("invoice.paid", "invoice.payment_succeeded")
# Refund states that take money back from the tenant, and those that give it back again.
REFUND_TAKEN = ("pending", "succeeded")
REFUND_UNDONE = ("failed", "canceled")


class WebhookRejected(Exception):  # noqa: N818 - a domain outcome
    """The webhook's signature or payload is invalid."""


@dataclass(frozen=True, slots=True)
class Handled:
    """What an event did; a ``problem`` flags it for a person (its writes still stand)."""

    outcome: str
    problem: str = ""


def stripe_webhook_receive(*, payload: bytes, signature: str, secret: str) -> str:
    """Verify → store once (unique event id) → handle under locks. Returns what happened."""
    try:
        event = webhook_event(payload=payload, signature=signature, secret=secret)
    except (SignatureError, ValueError) as exc:
        raise WebhookRejected(str(exc)) from exc
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise WebhookRejected("the event has no id")
    with transaction.atomic():
        stored, _ = StripeEvent.objects.get_or_create(
            event_id=event_id[:100],
            defaults={"type": str(event.get("type", ""))[:100], "payload": event},
        )
        stored = StripeEvent.objects.select_for_update().get(pk=stored.pk)
        if stored.status in (StripeEventStatus.PROCESSED, StripeEventStatus.IGNORED):
            return "duplicate"
        try:
            with transaction.atomic():
                handled = _handle_event(event)
        except (OperationalError, InterfaceError):
            raise  # transient: answer 500 so that Stripe delivers it again
        except Exception as exc:  # noqa: BLE001 - a poison event is stored, never retried for days
            logger.exception("Stripe event %s failed", event_id)
            handled = Handled("failed", f"{type(exc).__name__}: {exc}")
            stored.status = StripeEventStatus.FAILED
        else:
            stored.status = (
                StripeEventStatus.FLAGGED
                if handled.problem
                else StripeEventStatus.IGNORED
                if handled.outcome == "ignored"
                else StripeEventStatus.PROCESSED
            )
        stored.outcome = handled.outcome[:30]
        stored.error = handled.problem[:500]
        stored.processed_at = timezone.now()
        stored.save(update_fields=["status", "outcome", "error", "processed_at"])
    return handled.outcome


def _handle_event(event: dict[str, Any]) -> Handled:
    kind = event.get("type", "")
    obj = (event.get("data") or {}).get("object") or {}
    if kind in CHECKOUT_EVENTS:
        outcome = checkout_session_event(kind=kind, session=obj)
        return Handled(outcome.outcome, outcome.problem)
    if kind in REFUND_EVENTS:
        return _refund_mirror(obj)
    if kind in INVOICE_EVENTS:
        return _invoice_paid(obj)
    # Top-ups are Checkout Sessions only; payment intents and charges of other kinds, and
    # `charge.refunded` (whose refunds list the pinned API version no longer includes; the
    # refund events carry each refund), are not ours to handle.
    return Handled("ignored")


def _refund_mirror(refund: dict[str, Any]) -> Handled:
    """Mirror a refund made in Stripe (e.g. its Dashboard) in the ledger, once per refund.

    Partial refunds are separate refund objects, each mirrored once; one we issued ourselves is
    already posted under the same key. A refund that fails or is cancelled later is reversed.
    """
    refund_id = str(refund["id"])
    payment_intent = str(refund.get("payment_intent") or "")
    topup = (
        JournalEntry.objects.select_for_update()
        .filter(kind=EntryKind.TOPUP, external_ref=payment_intent)
        .first()
        if payment_intent
        else None
    )
    if topup is None:
        return Handled(
            "flagged", f"refund {refund_id} of {payment_intent or '?'} matches no top-up"
        )
    status = refund.get("status")
    if status in REFUND_UNDONE:
        posted = JournalEntry.objects.filter(idempotency_key=f"refund:{refund_id}").first()
        if posted is None:
            return Handled("ignored")
        ledger.entry_reverse(entry=posted, memo=f"refund {refund_id} {status} in Stripe")
        return Handled("refund_reversed")
    if status not in REFUND_TAKEN:
        return Handled("ignored")
    amount = int(refund["amount"])
    if str(refund.get("currency") or "").lower() != CURRENCY:
        return Handled("flagged", f"refund {refund_id} is in {refund.get('currency')!r}")
    if JournalEntry.objects.filter(idempotency_key=f"refund:{refund_id}").exists():
        return Handled("refund")
    topped, refunded = topup_refunded_cents(topup=topup)
    if not 0 < amount <= topped - refunded:
        return Handled(
            "flagged",
            f"refund {refund_id} of {amount} exceeds what is left of top-up {topup.pk}",
        )
    refund_post(
        topup=topup,
        refund_id=refund_id,
        amount_cents=amount,
        actor=None,
        reason="refunded in Stripe",
    )
    return Handled("refund")


def _invoice_paid(invoice: dict[str, Any]) -> Handled:
    """Settle what the tenant accrued; an excess is credited to its balance, visibly, and flagged."""
    invoice_id = str(invoice["id"])
    profile = (
        BillingProfile.objects.unscoped()
        .filter(stripe_customer_id=invoice.get("customer") or "-")
        .select_related("tenant")
        .first()
    )
    amount = int(invoice.get("amount_paid") or 0)
    if amount <= 0:
        return Handled("ignored")
    if profile is None:
        return Handled("flagged", f"invoice {invoice_id} paid by an unknown customer")
    if str(invoice.get("currency") or "").lower() != CURRENCY:
        return Handled("flagged", f"invoice {invoice_id} is in {invoice.get('currency')!r}")
    tenant = profile.tenant
    key = f"invoice:{invoice_id}"
    if JournalEntry.objects.filter(idempotency_key=key).exists():
        return Handled("invoice")
    receivable = ledger.account_get(AccountKind.TENANT_RECEIVABLE, tenant=tenant)
    owed = max(0, -Account.objects.select_for_update().get(pk=receivable.pk).balance_cents)
    settled = min(amount, owed)
    excess = amount - settled
    lines = [Line(ledger.account_get(AccountKind.STRIPE_CLEARING), -amount)]
    if settled:
        lines.append(Line(receivable, settled))
    if excess:
        lines.append(Line(ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant), excess))
    number = invoice.get("number") or invoice_id
    memo = f"invoice {number} paid"
    if excess:
        memo += f"; {format_cents(excess)} more than accrued, credited to the balance"
    ledger.entry_post(
        key=key,
        kind=EntryKind.INVOICE_PAYMENT,
        tenant=tenant,
        external_ref=invoice_id,
        memo=memo,
        lines=lines,
    )
    if excess:
        return Handled("invoice", f"invoice {number} paid {format_cents(excess)} beyond accrued")
    return Handled("invoice")
