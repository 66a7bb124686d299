"""A batch's contributor accounts (credits, earnings) are read, and the missing ones created,
with a fixed number of statements however many contributors are new; one another transaction is
creating at the same time is used, not duplicated. Real PostgreSQL, two connections."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from billing.metering_batch import _accounts_for_contributors
from billing.models import Account, AccountKind
from billing.money import CREDIT
from jobs.models import Contributor
from tests.held_transaction import transaction_held

pytestmark = [pytest.mark.services]


def _contributors(n: int) -> set:
    return {Contributor.objects.create().pk for _ in range(n)}


@pytest.mark.django_db
@pytest.mark.parametrize("new", [1, 40])
def test_new_contributors_accounts_take_the_same_statements_however_many(new):
    # given one contributor with a credit account and ``new`` without one
    (known,) = _contributors(1)
    existing = Account.objects.create(
        kind=AccountKind.CONTRIBUTOR_CREDITS, currency=CREDIT, contributor_id=known
    )
    fresh = _contributors(new)
    # when a batch asks for all their credit accounts
    with CaptureQueriesContext(connection) as queries:
        accounts = _accounts_for_contributors(AccountKind.CONTRIBUTOR_CREDITS, fresh | {known})
    # then four statements (read, which exist, one insert, read the new) did it
    assert len(queries) == 4
    # and every contributor has exactly one account, the existing one kept
    assert accounts[known].pk == existing.pk
    assert set(accounts) == fresh | {known}
    rows = Account.objects.filter(kind=AccountKind.CONTRIBUTOR_CREDITS)
    assert rows.count() == new + 1
    assert {a.contributor_id: a.pk for a in rows} == {c: a.pk for c, a in accounts.items()}


@pytest.mark.django_db
def test_contributors_with_accounts_take_one_statement():
    # given contributors that all have earnings accounts
    ids = _contributors(3)
    for c in ids:
        Account.objects.create(kind=AccountKind.CONTRIBUTOR_EARNINGS, contributor_id=c)
    # when a batch asks for them, one read answers
    with CaptureQueriesContext(connection) as queries:
        accounts = _accounts_for_contributors(AccountKind.CONTRIBUTOR_EARNINGS, ids)
    assert len(queries) == 1
    assert set(accounts) == ids


@pytest.mark.django_db
def test_an_unknown_contributor_gets_no_account():
    (known,) = _contributors(1)
    accounts = _accounts_for_contributors(AccountKind.CONTRIBUTOR_CREDITS, {known, uuid.uuid4()})
    assert set(accounts) == {known}


@pytest.mark.django_db(transaction=True)
def test_an_account_another_transaction_is_creating_is_waited_for_and_used():
    # given two new contributors, and another transaction that created the first one's credit
    # account and has not committed
    first, second = sorted(_contributors(2), key=str)
    # when a batch asks for both accounts meanwhile (the other commits half a second later)
    with (
        transaction_held(
            lambda: Account.objects.create(
                kind=AccountKind.CONTRIBUTOR_CREDITS, currency=CREDIT, contributor_id=first
            ),
            release_after_s=0.5,
        ) as theirs,
        transaction.atomic(),
    ):
        accounts = _accounts_for_contributors(AccountKind.CONTRIBUTOR_CREDITS, {first, second})
    # then the batch waited and used the other's account; one account per contributor
    assert accounts[first].pk == theirs.pk
    assert Account.objects.filter(contributor_id=first).count() == 1
    assert Account.objects.filter(contributor_id=second).count() == 1
