"""Parallel charges against one balance on real PostgreSQL: never beyond the floor, books at zero."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from billing import ledger
from billing.ledger import InsufficientFunds, Line
from billing.models import AccountKind, EntryKind, JournalEntry

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def test_parallel_charges_never_overdraw_and_the_books_balance(tenant):
    balance = ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant)
    revenue = ledger.account_get(AccountKind.PLATFORM_REVENUE)
    clearing = ledger.account_get(AccountKind.STRIPE_CLEARING)
    ledger.entry_post(
        key="seed", kind=EntryKind.TOPUP, lines=[Line(balance, 1000), Line(clearing, -1000)]
    )
    outcomes: list[str] = []
    lock = threading.Lock()

    def charge(worker: int) -> None:
        try:
            for attempt in range(10):
                # every charge is attempted twice under the same key (a retry), concurrently
                for _ in range(2):
                    try:
                        _, created = ledger.entry_post(
                            key=f"charge:{worker}:{attempt}",
                            kind=EntryKind.CHARGE,
                            lines=[Line(balance, -7), Line(revenue, 7)],
                            floors={balance.pk: 0},
                        )
                        result = "charged" if created else "duplicate"
                    except InsufficientFunds:
                        result = "refused"
                    with lock:
                        outcomes.append(result)
        finally:
            connection.close()

    threads = [threading.Thread(target=charge, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    balance.refresh_from_db()
    charged = JournalEntry.objects.filter(kind=EntryKind.CHARGE).count()
    assert balance.balance_cents == 1000 - 7 * charged
    assert 0 <= balance.balance_cents < 7  # spent down to the floor, never beyond
    assert charged == 1000 // 7
    assert outcomes.count("charged") == charged
    assert ledger.reconcile().ok
    assert connection.vendor == "postgresql"
