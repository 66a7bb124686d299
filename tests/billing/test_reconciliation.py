"""Issue 11, item 7: reconciliation against Stripe, with localstripe listing the payments, refunds
and invoices (it implements those list endpoints) and the ledger written as each bug left it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing import ledger, stripe_gateway
from billing.metering import usage_sweep_stale
from billing.models import Checkout, CheckoutStatus, EntryKind, JournalEntry, UsageKind, UsageRecord
from billing.operations import refund_post
from billing.reconciliation import stripe_reconcile
from billing.topups import topup_fulfil
from tenants.models import Tenant
from tenants.tiers import Tier
from tests.billing.test_stripe_gateway import CARD, localstripe_gateway

pytestmark = pytest.mark.django_db


@pytest.fixture
def core_tenant(tenant):
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.CORE)
    tenant.refresh_from_db()
    return tenant


def _charge(gateway, customer: str, card: str, tenant, cents: int, currency: str) -> str:  # noqa: ANN001
    intent, status = gateway.payment_intent_charge(
        customer_id=customer,
        payment_method=card,
        amount_cents=cents,
        currency=currency,
        key=f"recon-{currency}-{cents}",
        tenant_id=str(tenant.pk),
    )
    assert status == "succeeded"
    return intent


def test_reconciliation_reports_the_lost_charge_and_the_wrong_currency_credit(
    localstripe_url, core_tenant
):
    gateway = localstripe_gateway(localstripe_url)
    customer = gateway.customer_create(
        tenant_id=str(core_tenant.pk), name=core_tenant.name, email="books@example.org"
    )
    card = gateway.payment_method_attach(customer_id=customer, card=CARD)
    # a $20.00 top-up, credited as it should be
    usd = _charge(gateway, customer, card, core_tenant, 2000, "usd")
    topup_fulfil(
        session_id="cs_usd", tenant_id=str(core_tenant.pk), amount_cents=2000, payment_intent=usd
    )
    # the old handler's mistake: EUR 1000 taken, credited as $10.00
    eur = _charge(gateway, customer, card, core_tenant, 1000, "eur")
    topup_fulfil(
        session_id="cs_eur", tenant_id=str(core_tenant.pk), amount_cents=1000, payment_intent=eur
    )
    # a charge lost by a Celery task that died: usage pending for ten minutes
    lost = UsageRecord.objects.unscoped().create(
        tenant=core_tenant,
        kind=UsageKind.FL_ROUND,
        quantity=1,
        amount_cents=50,
        idempotency_key="fl:lost-for-reconciliation",
    )
    UsageRecord.objects.unscoped().filter(pk=lost.pk).update(
        created_at=timezone.now() - timedelta(minutes=10)
    )
    # and a refund made in the Stripe Dashboard that never reached the ledger
    refund = gateway.refund_create(payment_intent=usd, amount_cents=500, refund_key="dashboard")
    # the internal check sees nothing wrong: every entry balances
    assert ledger.reconcile().ok
    report = stripe_reconcile(client=gateway)
    assert report.stripe_checked
    found = {(d.kind, d.reference): d.problem for d in report.discrepancies}
    assert set(found) == {("payment", eur), ("usage", f"usage:{lost.pk}"), ("refund", refund)}
    assert "1000 EUR" in found[("payment", eur)]
    assert "$10.00" in found[("payment", eur)]
    assert "never charged" in found[("usage", f"usage:{lost.pk}")]
    assert report.checked["payments"] == 2
    # once the refund is mirrored and the sweep has charged the usage, only the currency remains
    topup = JournalEntry.objects.get(kind=EntryKind.TOPUP, external_ref=usd)
    refund_post(topup=topup, refund_id=refund, amount_cents=500, actor=None, reason="dashboard")
    assert usage_sweep_stale() == 1
    report = stripe_reconcile(client=gateway)
    assert [(d.kind, d.reference) for d in report.discrepancies] == [("payment", eur)]


def test_the_command_and_the_beat_task_report_without_stripe(core_tenant, settings):
    from billing import tasks

    assert stripe_gateway.gateway() is None
    call_command("billing_reconcile")  # books only, all fine
    assert tasks.stripe_reconcile.delay().get() is True
    Checkout.objects.create(
        tenant=core_tenant,
        session_id="cs_flagged",
        amount_cents=1000,
        status=CheckoutStatus.FLAGGED,
        problem="paid 1000 EUR but we priced 1000 USD",
    )
    with pytest.raises(CommandError, match="1 discrepancies"):
        call_command("billing_reconcile")
    assert tasks.stripe_reconcile.delay().get() is False
    assert "stripe-reconcile" in settings.CELERY_BEAT_SCHEDULE
    assert "usage-sweep-stale" in settings.CELERY_BEAT_SCHEDULE
