"""Signed webhooks as Stripe sends them: over HTTP to a real Daphne on real PostgreSQL, with
concurrent duplicate deliveries; the top-up charges the usage that waited for it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from billing import ledger
from billing.metering import tenant_balance_cents
from billing.models import (
    Checkout,
    CheckoutStatus,
    JournalEntry,
    StripeEvent,
    StripeEventStatus,
    UsageKind,
    UsageRecord,
    UsageStatus,
)
from billing.stripe_gateway import webhook_signature
from tenants.models import Tenant
from tenants.tiers import Tier
from tests.billing.helpers import WEBHOOK_SECRET, checkout_completed, checkout_recorded
from tests.servers import DaphneServer

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _post(url: str, payload: dict) -> tuple[int, dict]:
    body = json.dumps(payload)
    request = urllib.request.Request(
        f"{url}/billing/webhooks/stripe/",
        data=body.encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": webhook_signature(
                payload=body, secret=WEBHOOK_SECRET, timestamp=int(time.time())
            ),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def test_signed_webhooks_over_daphne_credit_only_what_we_priced(tenant):
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.CORE)
    # usage that waited for balance
    waiting = UsageRecord.objects.unscoped().create(
        tenant=tenant,
        kind=UsageKind.FL_ROUND,
        quantity=1,
        amount_cents=50,
        idempotency_key="fl:waiting",
        status=UsageStatus.UNPAID,
    )
    daphne = DaphneServer(STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    daphne.start()
    try:
        # a EUR payment for a USD checkout, and a session we never created: 2xx, nothing credited
        eur = checkout_completed(
            tenant_id=str(tenant.pk),
            amount_cents=1000,
            session_id=checkout_recorded(tenant, 1000),
            currency="eur",
        )
        unknown = checkout_completed(tenant_id="not-a-tenant", amount_cents=1000)
        assert _post(daphne.url, eur)[0] == 200
        assert _post(daphne.url, unknown)[0] == 200
        # a bank debit: pending, then succeeded, delivered ten times at once
        session_id = checkout_recorded(tenant, 2000)
        common = {"tenant_id": str(tenant.pk), "amount_cents": 2000, "session_id": session_id}
        pending = checkout_completed(**common, payment_status="unpaid")
        assert _post(daphne.url, pending) == (200, {"received": True, "outcome": "topup_pending"})
        succeeded = checkout_completed(**common, kind="checkout.session.async_payment_succeeded")
        statuses: list[int] = []

        def deliver() -> None:
            statuses.append(_post(daphne.url, succeeded)[0])

        threads = [threading.Thread(target=deliver) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 10, daphne.log_tail()
    finally:
        daphne.stop()
    assert tenant_balance_cents(tenant=tenant) == 2000 - 50
    waiting.refresh_from_db()
    assert waiting.status == UsageStatus.CHARGED
    assert Checkout.objects.for_tenant(tenant).get(session_id=session_id).status == "paid"
    assert (
        Checkout.objects.for_tenant(tenant).exclude(session_id=session_id).get().status
        == CheckoutStatus.FLAGGED
    )
    assert JournalEntry.objects.filter(kind="topup").count() == 1
    flagged = StripeEvent.objects.filter(status=StripeEventStatus.FLAGGED)
    assert {e.event_id for e in flagged} == {eur["id"], unknown["id"]}
    assert StripeEvent.objects.filter(event_id=succeeded["id"]).count() == 1
    assert ledger.reconcile().ok
