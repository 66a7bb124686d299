"""Reconciliation against Stripe, not only within the books.

The ledger proves itself balanced (``ledger.reconcile``); this proves it agrees with the money
that moved: every Stripe payment of ours, refund and paid invoice has exactly one ledger entry of
the same amount and currency (and every ledger entry naming a Stripe object has that object), and
no usage stays pending past the sweep. Run hourly by Celery beat and by
``manage.py billing_reconcile``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.utils import timezone

from billing import ledger, stripe_gateway
from billing.metering import STALE_PENDING_AFTER
from billing.models import (
    AccountKind,
    Checkout,
    CheckoutStatus,
    EntryKind,
    JournalEntry,
    Posting,
    UsageRecord,
    UsageStatus,
)
from billing.money import format_cents

# A refund in these states has taken money back, so the ledger must show it.
REFUNDS_THAT_MOVED_MONEY = ("pending", "succeeded")


@dataclass(frozen=True, slots=True)
class Discrepancy:
    kind: str  # ledger, usage, checkout, payment, refund, invoice
    reference: str
    problem: str

    def __str__(self) -> str:
        return f"{self.kind} {self.reference}: {self.problem}"


@dataclass(slots=True)
class Report:
    checked: dict[str, int] = field(default_factory=dict)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    stripe_checked: bool = False

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def add(self, kind: str, reference: str, problem: str) -> None:
        self.discrepancies.append(Discrepancy(kind, reference, problem))


def _money(amount: Any, currency: Any) -> str:
    code = str(currency or "?").lower()
    return format_cents(int(amount)) if code == "usd" else f"{amount} {code.upper()}"


def _entry_amounts(keys_or_refs: dict[str, list[JournalEntry]], account_kind: str) -> dict:
    """(amount, currency) each entry moved on accounts of ``account_kind``, by entry id."""
    ids = [entry.pk for entries in keys_or_refs.values() for entry in entries]
    amounts: dict[int, tuple[int, str]] = {}
    for entry_id, amount, currency in Posting.objects.filter(
        entry_id__in=ids, account__kind=account_kind
    ).values_list("entry_id", "amount_cents", "currency"):
        previous = amounts.get(entry_id, (0, currency))
        amounts[entry_id] = (previous[0] + amount, currency)
    return amounts


def _check_books(report: Report) -> None:
    books = ledger.reconcile()
    report.checked["accounts"] = len(books.mismatched_accounts)
    if not books.ok:
        report.add(
            "ledger",
            "books",
            f"totals {books.totals_by_currency}, unbalanced entries {books.unbalanced_entries}, "
            f"mismatched accounts {books.mismatched_accounts}",
        )


def _check_usage(report: Report, stale_after: timedelta) -> None:
    stale = UsageRecord.objects.unscoped().filter(
        status=UsageStatus.PENDING, created_at__lt=timezone.now() - stale_after
    )
    report.checked["pending_usage"] = stale.count()
    for usage in stale.order_by("id"):
        report.add(
            "usage",
            f"usage:{usage.pk}",
            f"{format_cents(usage.amount_cents)} of tenant {usage.tenant_id} pending since "
            f"{usage.created_at:%Y-%m-%d %H:%M}: never charged",
        )


def _check_checkouts(report: Report) -> None:
    for checkout in Checkout.objects.unscoped().filter(status=CheckoutStatus.FLAGGED):
        report.add("checkout", checkout.session_id, checkout.problem or "flagged")


def _check_payments(report: Report, payments: list[dict[str, Any]]) -> None:
    ours = [p for p in payments if (p.get("metadata") or {}).get("topup_id")]
    report.checked["payments"] = len(ours)
    topups: dict[str, list[JournalEntry]] = defaultdict(list)
    for entry in JournalEntry.objects.filter(kind=EntryKind.TOPUP).exclude(external_ref=""):
        topups[entry.external_ref].append(entry)
    amounts = _entry_amounts(topups, AccountKind.TENANT_BALANCE)
    for payment in ours:
        entries = topups.get(payment["id"], [])
        if len(entries) != 1:
            report.add(
                "payment",
                payment["id"],
                f"{_money(payment['amount'], payment['currency'])} has {len(entries)} ledger "
                "entries (expected exactly one)",
            )
            continue
        amount, currency = amounts.get(entries[0].pk, (0, "?"))
        if (amount, currency) != (payment["amount"], str(payment["currency"]).lower()):
            report.add(
                "payment",
                payment["id"],
                f"Stripe took {_money(payment['amount'], payment['currency'])}, the ledger "
                f"credited {_money(amount, currency)} (entry {entries[0].pk})",
            )
    paid = {p["id"] for p in payments}
    for reference, entries in topups.items():
        if reference.startswith("pi_") and reference not in paid:
            report.add("payment", reference, f"ledger entry {entries[0].pk} has no Stripe payment")


def _check_refunds(report: Report, refunds: list[dict[str, Any]]) -> None:
    moved = [r for r in refunds if r.get("status") in REFUNDS_THAT_MOVED_MONEY]
    report.checked["refunds"] = len(moved)
    entries: dict[str, list[JournalEntry]] = defaultdict(list)
    for entry in JournalEntry.objects.filter(kind=EntryKind.REFUND, reversed_by__isnull=True):
        entries[entry.idempotency_key.removeprefix("refund:")].append(entry)
    amounts = _entry_amounts(entries, AccountKind.TENANT_BALANCE)
    for refund in moved:
        found = entries.get(refund["id"], [])
        if len(found) != 1:
            report.add(
                "refund",
                refund["id"],
                f"{_money(refund['amount'], refund['currency'])} has {len(found)} ledger entries",
            )
            continue
        amount, currency = amounts.get(found[0].pk, (0, "?"))
        if (-amount, currency) != (refund["amount"], str(refund["currency"]).lower()):
            report.add(
                "refund",
                refund["id"],
                f"Stripe refunded {_money(refund['amount'], refund['currency'])}, the ledger "
                f"took back {_money(-amount, currency)}",
            )
    known = {r["id"] for r in moved}
    for reference, found in entries.items():
        if reference.startswith("re_") and reference not in known:
            report.add("refund", reference, f"ledger entry {found[0].pk} has no Stripe refund")


def _check_invoices(report: Report, invoices: list[dict[str, Any]]) -> None:
    paid = [i for i in invoices if int(i.get("amount_paid") or 0) > 0]
    report.checked["invoices"] = len(paid)
    entries: dict[str, list[JournalEntry]] = defaultdict(list)
    for entry in JournalEntry.objects.filter(kind=EntryKind.INVOICE_PAYMENT):
        entries[entry.idempotency_key.removeprefix("invoice:")].append(entry)
    amounts = _entry_amounts(entries, AccountKind.STRIPE_CLEARING)
    for invoice in paid:
        found = entries.get(invoice["id"], [])
        if len(found) != 1:
            report.add(
                "invoice",
                invoice["id"],
                f"{_money(invoice['amount_paid'], invoice['currency'])} paid has {len(found)} "
                "ledger entries",
            )
            continue
        amount, currency = amounts.get(found[0].pk, (0, "?"))
        if (-amount, currency) != (invoice["amount_paid"], str(invoice["currency"]).lower()):
            report.add(
                "invoice",
                invoice["id"],
                f"paid {_money(invoice['amount_paid'], invoice['currency'])}, the ledger "
                f"received {_money(-amount, currency)}",
            )


def stripe_reconcile(
    *, client: stripe_gateway.StripeGateway | None = None, stale_after: timedelta | None = None
) -> Report:
    """Check the books, pending usage and flagged checkouts, and (when Stripe is configured)
    every Stripe payment, refund and paid invoice against the ledger."""
    report = Report()
    _check_books(report)
    _check_usage(report, STALE_PENDING_AFTER if stale_after is None else stale_after)
    _check_checkouts(report)
    client = client or stripe_gateway.gateway()
    if client is not None:
        _check_payments(report, client.payments_list())
        _check_refunds(report, client.refunds_list())
        _check_invoices(report, client.invoices_paid_list())
        report.stripe_checked = True
    return report
