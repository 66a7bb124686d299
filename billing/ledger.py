"""The double-entry ledger: post balanced entries once, reverse them, reconcile the books."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Sum

from billing.models import Account, AccountKind, EntryKind, JournalEntry, Posting
from billing.money import CREDIT, CURRENCY


class LedgerError(ValueError):
    """An entry that would break the books (unbalanced, empty, mixed up)."""


class InsufficientFunds(Exception):  # noqa: N818 - a domain outcome, not a programming error
    """Posting would take an account below its floor."""

    def __init__(self, account: Account, balance_cents: int, needed_cents: int) -> None:
        super().__init__(f"{account} has {balance_cents}, needs {needed_cents}")
        self.account = account
        self.balance_cents = balance_cents
        self.needed_cents = needed_cents


@dataclass(frozen=True, slots=True)
class Line:
    account: Account
    amount_cents: int


def account_get(
    kind: str, *, tenant: Any = None, contributor: Any = None, currency: str | None = None
) -> Account:
    """The account of ``kind`` for an owner (created on first use, race-safe)."""
    if currency is None:
        currency = (
            CREDIT
            if kind in (AccountKind.CONTRIBUTOR_CREDITS, AccountKind.CREDIT_ISSUANCE)
            else CURRENCY
        )
    lookup = {"kind": kind, "currency": currency, "tenant": tenant, "contributor": contributor}
    account = Account.objects.filter(**lookup).first()
    if account is not None:
        return account
    try:
        with transaction.atomic():
            return Account.objects.create(**lookup)
    except IntegrityError:
        return Account.objects.get(**lookup)


def entry_post(
    *,
    key: str,
    kind: str,
    lines: Sequence[Line],
    memo: str = "",
    tenant: Any = None,
    created_by: Any = None,
    reverses: JournalEntry | None = None,
    external_ref: str = "",
    parent: JournalEntry | None = None,
    floors: dict[int, int] | None = None,
) -> tuple[JournalEntry, bool]:
    """Post a balanced entry once per ``key``; returns (entry, created).

    Locks the touched accounts in id order (no deadlocks), checks ``floors`` (account id →
    lowest allowed balance) under those locks, then writes. A replay with the same key returns
    the first entry and changes nothing; the unique key, not a read, guarantees it.
    """
    if not lines or any(line.amount_cents == 0 for line in lines):
        raise LedgerError("an entry needs non-zero lines")
    totals: dict[str, int] = defaultdict(int)
    for line in lines:
        totals[line.account.currency] += line.amount_cents
    if any(totals.values()):
        raise LedgerError(f"unbalanced entry {key}: {dict(totals)}")
    with transaction.atomic():
        existing = JournalEntry.objects.filter(idempotency_key=key).first()
        if existing is not None:
            return existing, False
        ids = sorted({line.account.pk for line in lines})
        locked = {
            a.pk: a for a in Account.objects.select_for_update().filter(pk__in=ids).order_by("pk")
        }
        deltas: dict[int, int] = defaultdict(int)
        for line in lines:
            deltas[line.account.pk] += line.amount_cents
        for account_id, floor in (floors or {}).items():
            account = locked[account_id]
            if account.balance_cents + deltas[account_id] < floor:
                raise InsufficientFunds(account, account.balance_cents, -deltas[account_id])
        try:
            with transaction.atomic():
                entry = JournalEntry.objects.create(
                    idempotency_key=key,
                    kind=kind,
                    memo=memo[:300],
                    tenant=tenant,
                    created_by=created_by,
                    reverses=reverses,
                    external_ref=external_ref[:200],
                    parent=parent,
                )
        except IntegrityError:
            return JournalEntry.objects.get(idempotency_key=key), False
        Posting.objects.bulk_create(
            Posting(
                entry=entry,
                account_id=line.account.pk,
                amount_cents=line.amount_cents,
                currency=line.account.currency,
            )
            for line in lines
        )
        _balances_add({account_id: delta for account_id, delta in deltas.items() if delta})
        return entry, True


def _balances_add(deltas: dict[int, int]) -> None:
    """Add each delta to its account's cached balance in one UPDATE (caller holds the rows).

    One statement whatever the number of accounts: a batch's credits entry touches one account
    per credited contributor, and an UPDATE each was most of a dispatch flush's statements."""
    if len(deltas) == 1:
        ((account_id, delta),) = deltas.items()
        Account.objects.filter(pk=account_id).update(balance_cents=F("balance_cents") + delta)
        return
    if not deltas:
        return
    ids = sorted(deltas)
    cases = " ".join(["WHEN %s THEN %s"] * len(ids))
    table = connection.ops.quote_name(Account._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET balance_cents = balance_cents + CASE id {cases} END "  # noqa: S608 - table name only
            f"WHERE id IN ({', '.join(['%s'] * len(ids))})",
            [value for account_id in ids for value in (account_id, deltas[account_id])] + ids,
        )


def entry_reverse(
    *, entry: JournalEntry, memo: str, created_by: Any = None
) -> tuple[JournalEntry, bool]:
    """Post the mirror image of ``entry`` (once: a second reversal returns the first)."""
    lines = [
        Line(account=p.account, amount_cents=-p.amount_cents)
        for p in entry.postings.select_related("account")
    ]
    return entry_post(
        key=f"reversal:{entry.pk}",
        kind=EntryKind.REVERSAL,
        lines=lines,
        memo=memo,
        tenant=entry.tenant,
        created_by=created_by,
        reverses=entry,
    )


@dataclass(frozen=True, slots=True)
class Reconciliation:
    ok: bool
    totals_by_currency: dict[str, int]
    unbalanced_entries: list[int]
    mismatched_accounts: list[tuple[int, int, int]]  # (account, cached, from postings)


def reconcile() -> Reconciliation:
    """Prove the books: every currency sums to zero, every entry balances, caches match postings."""
    totals = {
        row["currency"]: row["total"]
        for row in Posting.objects.values("currency").annotate(total=Sum("amount_cents"))
    }
    unbalanced = list(
        Posting.objects.values("entry_id", "currency")
        .annotate(total=Sum("amount_cents"))
        .exclude(total=0)
        .values_list("entry_id", flat=True)
    )
    sums = dict(
        Posting.objects.values("account_id")
        .annotate(total=Sum("amount_cents"))
        .values_list("account_id", "total")
    )
    mismatched = [
        (account_id, cached, sums.get(account_id, 0))
        for account_id, cached in Account.objects.values_list("id", "balance_cents")
        if cached != sums.get(account_id, 0)
    ]
    ok = not any(totals.values()) and not unbalanced and not mismatched
    return Reconciliation(
        ok=ok,
        totals_by_currency=totals,
        unbalanced_entries=unbalanced,
        mismatched_accounts=mismatched,
    )
