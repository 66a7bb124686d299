"""Issue 11, money: currencies, delayed payments, Stripe-side refunds, poison events, the portal,
test mode in production, invoice settlement, the billing page and bad amounts.

Webhooks are posted signed with Stripe's own scheme, with objects shaped as the pinned API
version (2026-10-28) sends them: Checkout Session, Refund and Invoice objects as documented in
Stripe's API reference (docs.stripe.com/api/checkout/sessions/object, /api/refunds/object,
/api/invoices/object).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.urls import reverse

from billing import ledger, stripe_gateway
from billing.metering import tenant_balance_cents, usage_charge, usage_emit
from billing.models import (
    AccountKind,
    Checkout,
    CheckoutStatus,
    EntryKind,
    JournalEntry,
    StripeEvent,
    StripeEventStatus,
    UsageKind,
)
from billing.profiles import billing_profile
from billing.stripe_gateway import StripeError, StripeGateway
from tenants.models import Tenant
from tenants.tiers import Tier
from tests.billing.helpers import (
    WEBHOOK_SECRET,
    checkout_completed,
    checkout_recorded,
    deliver,
    event,
    paid_checkout,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def core_tenant(tenant):
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.CORE)
    tenant.refresh_from_db()
    return tenant


@pytest.fixture
def webhook_settings(settings):
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return settings


def _stored(payload: dict) -> StripeEvent:
    return StripeEvent.objects.get(event_id=payload["id"])


def _refund(refund_id: str, *, payment_intent: str, amount: int, status: str = "succeeded"):  # noqa: ANN202
    """A Refund object as the refund events carry it."""
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "balance_transaction": f"txn_{uuid.uuid4().hex[:16]}",
        "charge": f"ch_{uuid.uuid4().hex[:16]}",
        "created": 1_790_000_000,
        "currency": "usd",
        "destination_details": {"type": "card", "card": {"type": "refund"}},
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": "requested_by_customer",
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": status,
        "transfer_reversal": None,
    }


# ---------------------------------------------------------------- 2. currency and provenance


def test_a_eur_checkout_is_not_credited_as_usd(client, core_tenant, webhook_settings):
    # given a $10.00 checkout we created
    session_id = checkout_recorded(core_tenant, 1000)
    # when Stripe says EUR 1000 was paid for it
    payload = checkout_completed(
        tenant_id=str(core_tenant.pk), amount_cents=1000, session_id=session_id, currency="eur"
    )
    response = deliver(client, payload)
    # then nothing is credited; the event and the checkout are flagged with the reason
    assert response.status_code == 200
    assert response.json()["outcome"] == "flagged"
    assert tenant_balance_cents(tenant=core_tenant) == 0
    stored = _stored(payload)
    assert stored.status == StripeEventStatus.FLAGGED
    assert "1000 EUR" in stored.error
    checkout = Checkout.objects.for_tenant(core_tenant).get()
    assert (checkout.status, checkout.entry) == (CheckoutStatus.FLAGGED, None)
    assert ledger.reconcile().ok


def test_a_session_we_never_created_is_stored_and_flagged_not_credited(
    client, core_tenant, webhook_settings
):
    payload = checkout_completed(tenant_id=str(core_tenant.pk), amount_cents=5000)
    response = deliver(client, payload)
    assert response.status_code == 200
    assert tenant_balance_cents(tenant=core_tenant) == 0
    stored = _stored(payload)
    assert stored.status == StripeEventStatus.FLAGGED
    assert "was not created here" in stored.error
    assert not JournalEntry.objects.filter(kind=EntryKind.TOPUP).exists()


def test_an_amount_other_than_priced_is_flagged(client, core_tenant, webhook_settings):
    session_id = checkout_recorded(core_tenant, 1000)
    payload = checkout_completed(
        tenant_id=str(core_tenant.pk), amount_cents=100_000, session_id=session_id
    )
    assert deliver(client, payload).json()["outcome"] == "flagged"
    assert tenant_balance_cents(tenant=core_tenant) == 0


# ---------------------------------------------------------------- 3. delayed payment methods


def test_a_bank_debit_is_pending_then_credited_once(
    client, owner_client, core_tenant, webhook_settings
):
    session_id = checkout_recorded(core_tenant, 2000)
    common = {"tenant_id": str(core_tenant.pk), "amount_cents": 2000, "session_id": session_id}
    completed = checkout_completed(**common, payment_status="unpaid", payment_intent="pi_debit")
    assert deliver(client, completed).json()["outcome"] == "topup_pending"
    assert tenant_balance_cents(tenant=core_tenant) == 0
    assert Checkout.objects.for_tenant(core_tenant).get().status == CheckoutStatus.PENDING
    assert "Payment processing" in owner_client.get(reverse("billing")).content.decode()
    # the money arrives days later; Stripe may deliver the event more than once
    succeeded = checkout_completed(
        **common,
        kind="checkout.session.async_payment_succeeded",
        payment_intent="pi_debit",
    )
    assert deliver(client, succeeded).json()["outcome"] == "topup"
    assert deliver(client, {**succeeded, "id": "evt_again"}).json()["outcome"] == "duplicate"
    assert deliver(client, completed).status_code == 200  # a late redelivery of the first
    assert tenant_balance_cents(tenant=core_tenant) == 2000
    checkout = Checkout.objects.for_tenant(core_tenant).get()
    assert (checkout.status, checkout.payment_intent) == (CheckoutStatus.PAID, "pi_debit")
    assert JournalEntry.objects.filter(kind=EntryKind.TOPUP).count() == 1


def test_a_failed_bank_debit_is_marked_failed_and_shown(
    client, owner_client, core_tenant, webhook_settings
):
    session_id = checkout_recorded(core_tenant, 2000)
    common = {"tenant_id": str(core_tenant.pk), "amount_cents": 2000, "session_id": session_id}
    deliver(client, checkout_completed(**common, payment_status="unpaid"))
    failed = checkout_completed(
        **common, payment_status="unpaid", kind="checkout.session.async_payment_failed"
    )
    assert deliver(client, failed).json()["outcome"] == "topup_failed"
    assert tenant_balance_cents(tenant=core_tenant) == 0
    page = owner_client.get(reverse("billing")).content.decode()
    assert "Payment failed" in page
    assert "The bank payment failed" in page


# ---------------------------------------------------------------- 4. refunds made in Stripe


def test_dashboard_refunds_are_mirrored_once_each_partial_included(
    client, core_tenant, webhook_settings
):
    deliver(client, paid_checkout(core_tenant, 2000, payment_intent="pi_refunded"))
    assert tenant_balance_cents(tenant=core_tenant) == 2000
    # the pinned version's charge.refunded no longer lists refunds: it changes nothing by itself
    charge = event(
        "charge.refunded",
        {"id": "ch_1", "object": "charge", "amount_refunded": 300, "payment_intent": "pi_refunded"},
    )
    assert deliver(client, charge).json()["outcome"] == "ignored"
    first = _refund("re_first", payment_intent="pi_refunded", amount=300)
    for kind in ("refund.created", "refund.updated", "refund.created"):
        assert deliver(client, event(kind, first)).status_code == 200
    assert tenant_balance_cents(tenant=core_tenant) == 1700
    second = _refund("re_second", payment_intent="pi_refunded", amount=400, status="pending")
    assert deliver(client, event("refund.created", second)).json()["outcome"] == "refund"
    assert tenant_balance_cents(tenant=core_tenant) == 1300
    # the pending refund fails later: the money is back
    failed = {**second, "status": "failed"}
    assert deliver(client, event("refund.failed", failed)).json()["outcome"] == "refund_reversed"
    assert tenant_balance_cents(tenant=core_tenant) == 1700
    # more than is left of the top-up is flagged, not posted
    too_much = _refund("re_third", payment_intent="pi_refunded", amount=1800)
    assert deliver(client, event("refund.created", too_much)).json()["outcome"] == "flagged"
    assert tenant_balance_cents(tenant=core_tenant) == 1700
    assert JournalEntry.objects.filter(kind=EntryKind.REFUND).count() == 2
    assert ledger.reconcile().ok


# ---------------------------------------------------------------- 5. poison events


@pytest.mark.parametrize("tenant_id", ["not-a-uuid", str(uuid.uuid4()), "", "0" * 500])
def test_unknown_or_malformed_tenant_ids_are_stored_flagged_and_answered_2xx(
    client, core_tenant, webhook_settings, tenant_id
):
    payload = checkout_completed(tenant_id=tenant_id, amount_cents=1000)
    response = deliver(client, payload)
    assert response.status_code == 200
    assert _stored(payload).status == StripeEventStatus.FLAGGED
    assert not JournalEntry.objects.exists()


def test_a_handler_error_is_stored_failed_answered_2xx_and_surfaced_to_staff(
    client, core_tenant, webhook_settings
):
    deliver(client, paid_checkout(core_tenant, 2000, payment_intent="pi_poison"))
    poison = event("refund.created", _refund("re_x", payment_intent="pi_poison", amount="lots"))
    response = deliver(client, poison)
    assert response.status_code == 200
    assert response.json()["outcome"] == "failed"
    stored = _stored(poison)
    assert stored.status == StripeEventStatus.FAILED
    assert "ValueError" in stored.error
    assert tenant_balance_cents(tenant=core_tenant) == 2000
    # administrators see it: a filter on the event list, and a count on the billing page
    staff = UserFactory(is_staff=True, is_superuser=True)
    from tests.factories import MembershipFactory

    MembershipFactory(user=staff, tenant=core_tenant)
    client.force_login(staff)
    listing = client.get(reverse("admin:billing_stripeevent_changelist") + "?attention=yes")
    assert poison["id"] in listing.content.decode()
    assert "1 Stripe event needs attention" in client.get(reverse("billing")).content.decode()


def test_a_failed_event_is_handled_again_when_redelivered(client, core_tenant, webhook_settings):
    payload = checkout_completed(tenant_id=str(core_tenant.pk), amount_cents=1000)
    deliver(client, payload)
    assert _stored(payload).status == StripeEventStatus.FLAGGED
    # an administrator finds the missing checkout row (say, written by an older deployment)
    Checkout.objects.create(
        tenant=core_tenant, session_id=payload["data"]["object"]["id"], amount_cents=1000
    )
    assert deliver(client, payload).json()["outcome"] == "topup"
    assert _stored(payload).status == StripeEventStatus.PROCESSED
    assert tenant_balance_cents(tenant=core_tenant) == 1000


# ---------------------------------------------------------------- 6. portal, test mode, Stripe calls


def test_the_portal_answers_a_message_not_500_when_stripe_fails(
    owner_client, core_tenant, settings, monkeypatch
):
    class Failing:
        def portal_session_create(self, **_: object) -> str:
            raise StripeError("No configuration provided for the customer portal")

        def invoices_list(self, **_: object) -> list:
            raise StripeError("Stripe is down")

    settings.STRIPE_SECRET_KEY = "sk_test_unused"
    monkeypatch.setattr("billing.views.gateway", lambda: Failing())
    profile = billing_profile(tenant=core_tenant)
    profile.stripe_customer_id = "cus_portal"
    profile.save()
    response = owner_client.get(reverse("billing_portal"))
    assert response.status_code == 302
    page = owner_client.get(response.url)
    assert page.status_code == 200
    assert "customer portal is unavailable" in page.content.decode()


def test_production_refuses_test_payments_unless_a_demo_allows_them(
    owner_client, core_tenant, settings
):
    env = {
        **os.environ,
        "CCGSC_ENV": "production",
        "DJANGO_SECRET_KEY": "x" * 60,
        "DJANGO_ALLOWED_HOSTS": "ccgsc.example.org",
        "STRIPE_SECRET_KEY": "",
    }
    probe = "import ccgsc_site.settings as s; print(s.BILLING_TEST_MODE_ALLOWED)"

    def allowed(**extra: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", probe],
            cwd=ROOT,
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    assert allowed() == "False"
    assert allowed(CCGSC_ALLOW_TEST_PAYMENTS="1") == "True"
    # and with test payments refused, an owner cannot credit themselves
    settings.BILLING_TEST_MODE_ALLOWED = False
    response = owner_client.post(reverse("billing_checkout"), {"amount": "25"})
    assert response.status_code == 400
    assert "Payments are not configured" in response.content.decode()
    assert not Checkout.objects.for_tenant(core_tenant).exists()
    session_id = checkout_recorded(core_tenant, 2500)
    Checkout.objects.for_tenant(core_tenant).filter(session_id=session_id).update(test_mode=True)
    url = reverse("billing_test_checkout", args=[session_id])
    assert owner_client.post(url).status_code == 404
    assert tenant_balance_cents(tenant=core_tenant) == 0


def test_the_customer_idempotency_key_follows_its_parameters():
    from tests.billing.test_stripe_gateway import RecordedStripe

    recorded = RecordedStripe(
        {("POST", "/v1/customers"): {"id": "cus_recorded", "object": "customer"}}
    )
    gateway = StripeGateway(api_key="sk_test_recorded", http_client=recorded)
    gateway.customer_create(tenant_id="t-1", name="Lab", email="a@example.org")
    gateway.customer_create(tenant_id="t-1", name="Lab", email="a@example.org")  # a retry
    gateway.customer_create(tenant_id="t-1", name="Lab", email="b@example.org")
    keys = [request["headers"]["Idempotency-Key"] for request in recorded.requests]
    assert keys[0] == keys[1]
    assert keys[2] != keys[0]
    assert all(key.startswith("customer:t-1:") for key in keys)


def _invoice(invoice_id: str, *, customer: str, amount_paid: int) -> dict:
    return {
        "id": invoice_id,
        "object": "invoice",
        "amount_due": amount_paid,
        "amount_paid": amount_paid,
        "amount_remaining": 0,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "currency": "usd",
        "customer": customer,
        "number": "CCG-0001",
        "status": "paid",
    }


def test_a_paid_invoice_settles_only_what_was_accrued(client, tenant, webhook_settings):
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.ENTERPRISE)
    tenant.refresh_from_db()
    usage = usage_emit(
        tenant=tenant, kind=UsageKind.FL_ROUND, quantity=1, key="fl-round:inv:1", amount_cents=40
    )
    assert usage_charge(usage_id=usage.pk).status == "invoiced"
    profile = billing_profile(tenant=tenant)
    profile.stripe_customer_id = "cus_enterprise"
    profile.save()
    payload = event("invoice.paid", _invoice("in_1", customer="cus_enterprise", amount_paid=1040))
    response = deliver(client, payload)
    assert response.json()["outcome"] == "invoice"
    receivable = ledger.account_get(AccountKind.TENANT_RECEIVABLE, tenant=tenant)
    assert receivable.balance_cents == 0  # never positive
    assert tenant_balance_cents(tenant=tenant) == 1000  # the excess, as customer credit
    stored = _stored(payload)
    assert stored.status == StripeEventStatus.FLAGGED
    assert "beyond accrued" in stored.error
    entry = JournalEntry.objects.get(kind=EntryKind.INVOICE_PAYMENT)
    assert "more than accrued" in entry.memo
    # invoice.payment_succeeded for the same invoice posts nothing more
    again = event("invoice.payment_succeeded", payload["data"]["object"])
    assert deliver(client, again).json()["outcome"] == "invoice"
    assert JournalEntry.objects.filter(kind=EntryKind.INVOICE_PAYMENT).count() == 1
    assert ledger.reconcile().ok


# ---------------------------------------------------------------- 8. the billing page


def test_the_billing_page_shows_amounts_names_prices_and_only_the_tenants_entries(
    owner_client, core_tenant, client, webhook_settings
):
    deliver(client, paid_checkout(core_tenant, 1234))
    usage = usage_emit(
        tenant=core_tenant,
        kind=UsageKind.FC_WORK_UNITS,
        quantity=10**9,
        key="fc-page:1",
        amount_cents=10,
    )
    usage_charge(usage_id=usage.pk)
    # a contributor share moves platform revenue: not a charge to the tenant
    ledger.entry_post(
        key="earnings:usage:page",
        kind=EntryKind.CONTRIBUTOR_SHARE,
        lines=[
            ledger.Line(ledger.account_get(AccountKind.PLATFORM_REVENUE), -5),
            ledger.Line(ledger.account_get(AccountKind.PAYOUTS), 5),
        ],
        memo="contributor share of charge",
    )
    page = owner_client.get(reverse("billing")).content.decode()
    assert "<th>Amount</th>" in page
    assert "$12.34" in page
    assert "-$0.10" in page
    assert "Validated FC work units" in page
    assert "fc_work_units" not in page
    assert "10¢ per 10<sup>9</sup> validated work units" in page
    assert "$0.50 per completed round" in page
    assert "contributor share" not in page


# ---------------------------------------------------------------- 9. amounts typed by people


@pytest.mark.parametrize("amount", ["abc", "1.5", "inf", "1e400", "NaN", "-25", "25.001", ""])
def test_bad_top_up_amounts_answer_400_not_500(owner_client, core_tenant, amount):
    response = owner_client.post(reverse("billing_checkout"), {"amount": amount})
    assert response.status_code == 400
    assert not Checkout.objects.for_tenant(core_tenant).exists()


@pytest.mark.parametrize("amount", ["abc", "1.5", "inf", "1e400", "999999"])
def test_the_test_checkout_refuses_amounts_other_than_started(owner_client, core_tenant, amount):
    started = owner_client.post(reverse("billing_checkout"), {"amount": "25"})
    url = started.url
    assert owner_client.get(url, {"amount": amount}).status_code == 400
    assert owner_client.post(url, {"amount": amount}).status_code == 400
    assert tenant_balance_cents(tenant=core_tenant) == 0
    assert owner_client.post(url).status_code == 302
    assert tenant_balance_cents(tenant=core_tenant) == 2500


def test_stripe_gateway_is_the_only_stripe_import():
    assert stripe_gateway.API_VERSION == "2026-10-28.endive"


def test_another_tenants_test_checkout_is_a_404_and_credits_nothing(
    owner_client, core_tenant, other_tenant
):
    session_id = checkout_recorded(other_tenant, 2500)
    Checkout.objects.for_tenant(other_tenant).update(test_mode=True)
    url = reverse("billing_test_checkout", args=[session_id])
    assert owner_client.get(url).status_code == 404
    assert owner_client.post(url).status_code == 404
    assert tenant_balance_cents(tenant=core_tenant) == 0
    assert tenant_balance_cents(tenant=other_tenant) == 0
    assert Checkout.objects.for_tenant(other_tenant).get().status == CheckoutStatus.OPEN
