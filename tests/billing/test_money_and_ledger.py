"""Money rounding and the double-entry ledger."""

from __future__ import annotations

import contextlib
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import ledger
from billing.ledger import InsufficientFunds, LedgerError, Line
from billing.models import AccountKind, EntryKind, JournalEntry, Posting
from billing.money import cents_for, format_cents
from billing.pricing import credits_for, price_for
from tenants.tiers import Tier


@pytest.mark.parametrize(
    ("quantity", "price", "per", "expected"),
    [
        (0, 10, 1, 0),
        (1, 10, 1, 10),
        (1, 1, 2, 1),  # 0.5 rounds half up
        (1, 1, 3, 0),  # 0.333 rounds down
        (2, 1, 3, 1),  # 0.667 rounds up
        (10**9, 10, 10**9, 10),
        (15 * 10**8, 10, 10**9, 15),
        (25 * 10**7, 10, 10**9, 3),  # 2.5 → 3
        (3, Fraction(1, 2), 1, 2),  # 1.5 → 2
        (10**18, 1, 1, 10**18),  # no float anywhere
    ],
)
def test_cents_for_table(quantity, price, per, expected):
    assert cents_for(quantity=quantity, price_cents=price, per=per) == expected


def test_cents_for_refuses_negative_quantities():
    with pytest.raises(ValueError, match="negative"):
        cents_for(quantity=-1, price_cents=1)


@given(st.integers(0, 10**15), st.integers(0, 10**6), st.integers(1, 10**9))
def test_cents_for_is_within_half_a_cent(quantity, price, per):
    exact = Fraction(quantity * price, per)
    assert abs(cents_for(quantity=quantity, price_cents=price, per=per) - exact) <= Fraction(1, 2)


def test_format_and_prices():
    assert format_cents(123456) == "$1,234.56"
    assert format_cents(-5) == "-$0.05"
    assert price_for(Tier.CORE).fc_work_cents(10**9) == 10
    assert price_for(Tier.COMMUNITY).fc_work_cents(10**12) == 0
    assert credits_for(10**6, Tier.COMMUNITY) == 1  # at least one credit
    assert credits_for(10**13, Tier.CORE) == 1000  # capped


pytestmark = pytest.mark.django_db


def _accounts(tenant):  # noqa: ANN001, ANN202
    return (
        ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant),
        ledger.account_get(AccountKind.STRIPE_CLEARING),
        ledger.account_get(AccountKind.PLATFORM_REVENUE),
    )


def test_entries_must_balance_and_be_non_zero(tenant):
    balance, clearing, _ = _accounts(tenant)
    with pytest.raises(LedgerError, match="unbalanced"):
        ledger.entry_post(
            key="k1", kind=EntryKind.TOPUP, lines=[Line(balance, 100), Line(clearing, -99)]
        )
    with pytest.raises(LedgerError, match="non-zero"):
        ledger.entry_post(key="k2", kind=EntryKind.TOPUP, lines=[Line(balance, 0)])
    assert not JournalEntry.objects.exists()


def test_same_key_posts_once(tenant):
    balance, clearing, _ = _accounts(tenant)
    lines = [Line(balance, 500), Line(clearing, -500)]
    first, created = ledger.entry_post(key="topup:x", kind=EntryKind.TOPUP, lines=lines)
    again, created_again = ledger.entry_post(key="topup:x", kind=EntryKind.TOPUP, lines=lines)
    assert (created, created_again) == (True, False)
    assert first.pk == again.pk
    balance.refresh_from_db()
    assert balance.balance_cents == 500
    assert Posting.objects.count() == 2


def test_floor_refuses_overdraft_and_writes_nothing(tenant):
    balance, clearing, revenue = _accounts(tenant)
    ledger.entry_post(
        key="t", kind=EntryKind.TOPUP, lines=[Line(balance, 100), Line(clearing, -100)]
    )
    with pytest.raises(InsufficientFunds):
        ledger.entry_post(
            key="c",
            kind=EntryKind.CHARGE,
            lines=[Line(balance, -101), Line(revenue, 101)],
            floors={balance.pk: 0},
        )
    balance.refresh_from_db()
    assert balance.balance_cents == 100
    assert not JournalEntry.objects.filter(idempotency_key="c").exists()


def test_reversal_mirrors_once_and_books_reconcile(tenant):
    balance, clearing, _ = _accounts(tenant)
    entry, _ = ledger.entry_post(
        key="t", kind=EntryKind.TOPUP, lines=[Line(balance, 700), Line(clearing, -700)]
    )
    reversal, created = ledger.entry_reverse(entry=entry, memo="mistake")
    _, created_again = ledger.entry_reverse(entry=entry, memo="mistake")
    assert (created, created_again) == (True, False)
    assert reversal.reverses == entry
    balance.refresh_from_db()
    assert balance.balance_cents == 0
    report = ledger.reconcile()
    assert report.ok
    assert report.totals_by_currency == {"usd": 0}


def test_reconcile_detects_a_tampered_cache(tenant):
    balance, clearing, _ = _accounts(tenant)
    ledger.entry_post(
        key="t", kind=EntryKind.TOPUP, lines=[Line(balance, 700), Line(clearing, -700)]
    )
    type(balance).objects.filter(pk=balance.pk).update(balance_cents=1)
    report = ledger.reconcile()
    assert not report.ok
    assert report.mismatched_accounts == [(balance.pk, 1, 700)]


# The tenant fixture is shared across examples on purpose: entries accumulate, the books must hold.
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.integers(-5000, 5000), st.booleans()), min_size=1, max_size=15))
def test_any_sequence_of_entries_keeps_the_books_at_zero(tenant, operations):
    balance, clearing, revenue = _accounts(tenant)
    for index, (amount, charge) in enumerate(operations):
        if amount == 0:
            continue
        other = revenue if charge else clearing
        with contextlib.suppress(InsufficientFunds):
            ledger.entry_post(
                key=f"h:{tenant.pk}:{index}:{amount}:{charge}:{JournalEntry.objects.count()}",
                kind=EntryKind.ADJUSTMENT,
                lines=[Line(balance, amount), Line(other, -amount)],
                floors={balance.pk: -10_000},
            )
    assert ledger.reconcile().ok
    balance.refresh_from_db()
    assert balance.balance_cents >= -10_000
