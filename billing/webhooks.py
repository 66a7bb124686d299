"""Stripe webhooks: verify → store once (unique event id) → dispatch by type → handle under locks."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from billing import ledger
from billing.ledger import Line
from billing.models import AccountKind, BillingProfile, EntryKind, JournalEntry, StripeEvent
from billing.operations import refund_post
from billing.stripe_gateway import SignatureError, webhook_event
from billing.topups import topup_fulfil


class WebhookRejected(Exception):  # noqa: N818 - a domain outcome
    """The webhook's signature or payload is invalid."""


def stripe_webhook_receive(*, payload: bytes, signature: str, secret: str) -> str:
    """Verify → store once (unique event id) → handle under locks. Returns what happened."""
    try:
        event = webhook_event(payload=payload, signature=signature, secret=secret)
    except (SignatureError, ValueError) as exc:
        raise WebhookRejected(str(exc)) from exc
    with transaction.atomic():
        stored, created = StripeEvent.objects.get_or_create(
            event_id=event["id"], defaults={"type": event.get("type", ""), "payload": event}
        )
        if not created and stored.processed_at is not None:
            return "duplicate"
        stored = StripeEvent.objects.select_for_update().get(pk=stored.pk)
        if stored.processed_at is not None:
            return "duplicate"
        outcome = _handle_event(event)
        stored.processed_at = timezone.now()
        stored.save(update_fields=["processed_at"])
    return outcome


def _handle_event(event: dict[str, Any]) -> str:
    kind = event.get("type", "")
    obj = event.get("data", {}).get("object", {})
    if kind == "checkout.session.completed":
        if obj.get("mode") != "payment" or obj.get("payment_status") != "paid":
            return "ignored"
        metadata = obj.get("metadata") or {}
        tenant_id = metadata.get("tenant_id") or obj.get("client_reference_id")
        amount = int(obj.get("amount_total") or metadata.get("amount_cents") or 0)
        if not tenant_id or amount <= 0:
            return "ignored"
        topup_fulfil(
            session_id=obj["id"],
            tenant_id=tenant_id,
            amount_cents=amount,
            payment_intent=obj.get("payment_intent") or "",
        )
        return "topup"
    if kind == "payment_intent.succeeded":
        metadata = obj.get("metadata") or {}
        if metadata.get("topup_id", "").startswith("auto-"):
            topup_fulfil(
                session_id=metadata["topup_id"],
                tenant_id=metadata["tenant_id"],
                amount_cents=int(obj["amount"]),
                payment_intent=obj["id"],
            )
            return "topup"
        return "ignored"
    if kind == "charge.refunded":
        return _refunds_record(obj)
    if kind in ("invoice.paid", "invoice.payment_succeeded"):
        return _invoice_paid(obj)
    return "ignored"


def _refunds_record(charge: dict[str, Any]) -> str:
    """Mirror refunds made in Stripe (e.g. from its dashboard) in the ledger, once per refund."""
    refunds = (charge.get("refunds") or {}).get("data") or []
    topup = JournalEntry.objects.filter(
        kind=EntryKind.TOPUP, external_ref=charge.get("payment_intent") or "-"
    ).first()
    if topup is None:
        return "ignored"
    for refund in refunds:
        refund_post(
            topup=topup,
            refund_id=refund["id"],
            amount_cents=int(refund["amount"]),
            actor=None,
            reason="refunded in Stripe",
        )
    return "refund"


def _invoice_paid(invoice: dict[str, Any]) -> str:
    profile = (
        BillingProfile.objects.unscoped()
        .filter(stripe_customer_id=invoice.get("customer") or "-")
        .select_related("tenant")
        .first()
    )
    if profile is None or not invoice.get("amount_paid"):
        return "ignored"
    amount = int(invoice["amount_paid"])
    ledger.entry_post(
        key=f"invoice:{invoice['id']}",
        kind=EntryKind.INVOICE_PAYMENT,
        tenant=profile.tenant,
        external_ref=invoice["id"],
        memo=f"invoice {invoice.get('number') or invoice['id']} paid",
        lines=[
            Line(ledger.account_get(AccountKind.TENANT_RECEIVABLE, tenant=profile.tenant), amount),
            Line(ledger.account_get(AccountKind.STRIPE_CLEARING), -amount),
        ],
    )
    return "invoice"
