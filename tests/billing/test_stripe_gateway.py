"""The Stripe gateway against localstripe (a stateful fake Stripe server run here), and, for the
endpoints localstripe lacks (Checkout Sessions, Billing Meters, the customer portal), at the
gateway boundary with recorded Stripe-shaped responses: those tests say so."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
import stripe  # noqa: TID251 - tests drive a fake HTTP client that the stripe library calls

from billing import contracts, ledger, metering, profiles
from billing.models import AccountKind, EntryKind, JournalEntry, StripeEvent, UsageKind
from billing.stripe_gateway import StripeError, StripeGateway
from tenants.models import Tenant
from tenants.tiers import Tier
from tests.servers import DaphneServer

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}
DECLINED = {**CARD, "number": "4000000000000002"}
WEBHOOK_SECRET = "whsec_localstripe_suite"


class PlanItemsForLocalstripe(stripe.HTTPClient):
    """localstripe implements subscriptions on the legacy Plans only, not Prices: this adapter
    renames the gateway's ``items[][price]`` parameter to ``items[][plan]`` on the way there, so
    the gateway's own call still runs end to end. Everything else passes through unchanged."""

    name = "localstripe-plans"

    def __init__(self) -> None:
        super().__init__()
        self.inner = stripe.new_default_http_client()

    def request(self, method, url, headers, post_data=None, *, _usage=None):  # noqa: ANN001, ANN201
        if post_data:
            post_data = post_data.replace("%5Bprice%5D", "%5Bplan%5D").replace("[price]", "[plan]")
        return self.inner.request(method, url, headers, post_data)

    def close(self) -> None:
        self.inner.close()


def localstripe_gateway(url: str) -> StripeGateway:
    return StripeGateway(
        api_key="sk_test_suite", api_base=url, http_client=PlanItemsForLocalstripe()
    )


@pytest.fixture
def gateway(localstripe_url):
    return localstripe_gateway(localstripe_url)


def test_customer_card_payment_and_partial_refund(gateway):
    customer = gateway.customer_create(tenant_id="t-1", name="Lab", email="lab@example.org")
    assert customer.startswith("cus_")
    method = gateway.payment_method_attach(customer_id=customer, card=CARD)
    intent, status = gateway.payment_intent_charge(
        customer_id=customer,
        payment_method=method,
        amount_cents=2500,
        currency="usd",
        key="auto-t1",
        tenant_id="t-1",
    )
    assert status == "succeeded"
    refund = gateway.refund_create(payment_intent=intent, amount_cents=1000, refund_key="t1-1")
    assert refund.startswith("re_")


def test_declined_card_raises_a_stripe_error(gateway):
    customer = gateway.customer_create(tenant_id="t-2", name="Lab", email="lab2@example.org")
    # localstripe declines this test card as soon as it is attached, as Stripe does on setup
    with pytest.raises(StripeError, match="declined"):
        gateway.payment_method_attach(customer_id=customer, card=DECLINED)


def _configure_webhook(localstripe_url: str, target: str) -> None:
    body = urllib.parse.urlencode({"url": target, "secret": WEBHOOK_SECRET}).encode()
    request = urllib.request.Request(
        f"{localstripe_url}/_config/webhooks/ccgsc", data=body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_enterprise_invoice_is_delivered_signed_and_settles_the_receivable(
    localstripe_url, gateway, tenant
):
    # given an Enterprise tenant with invoiced usage, and Daphne receiving localstripe's webhooks
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.ENTERPRISE)
    tenant.refresh_from_db()
    usage = metering.usage_emit(
        tenant=tenant, kind=UsageKind.FL_ROUND, quantity=1, key="fl-round:x:1", amount_cents=40
    )
    assert metering.usage_charge(usage_id=usage.pk).status == "invoiced"
    receivable = ledger.account_get(AccountKind.TENANT_RECEIVABLE, tenant=tenant)
    receivable.refresh_from_db()
    assert receivable.balance_cents == -40
    daphne = DaphneServer(
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STRIPE_SECRET_KEY="sk_test_suite",
        STRIPE_API_BASE=localstripe_url,
    )
    daphne.start()
    try:
        _configure_webhook(localstripe_url, f"{daphne.url}/billing/webhooks/stripe/")
        customer = gateway.customer_create(
            tenant_id=str(tenant.pk), name=tenant.name, email="ent@example.org"
        )
        profile = profiles.billing_profile(tenant=tenant)
        profile.stripe_customer_id = customer
        profile.save()
        method = gateway.payment_method_attach(customer_id=customer, card=CARD)
        product = gateway.client.v1.products.create(params={"name": "CCGSC Enterprise"})
        plan = gateway.client.v1.plans.create(
            params={"amount": 40, "currency": "usd", "interval": "month", "product": product.id}
        )
        # when the contract subscription is created, localstripe invoices, charges the card and
        # delivers signed events to our endpoint
        gateway.subscription_create(
            customer_id=customer, price_id=plan.id, tenant_id=str(tenant.pk), payment_method=method
        )
        invoices = gateway.invoices_list(customer_id=customer)
        assert [(i["status"], i["amount_paid"]) for i in invoices] == [("paid", 40)]
        deadline = time.monotonic() + 20
        while not JournalEntry.objects.filter(kind=EntryKind.INVOICE_PAYMENT).exists():
            assert time.monotonic() < deadline, daphne.log_tail()
            time.sleep(0.2)
    finally:
        daphne.stop()
    # then the receivable is settled once, every delivered event was stored once, books balance
    receivable.refresh_from_db()
    assert receivable.balance_cents == 0
    ours = [
        e
        for e in StripeEvent.objects.filter(type="invoice.payment_succeeded")
        if e.payload["data"]["object"]["customer"] == customer
    ]
    assert len(ours) == 1  # (localstripe is shared by the module: other tests' events may arrive)
    assert JournalEntry.objects.filter(kind=EntryKind.INVOICE_PAYMENT).count() == 1
    assert StripeEvent.objects.filter(processed_at__isnull=True).count() == 0
    assert ledger.reconcile().ok


class RecordedStripe(stripe.HTTPClient):
    """Answers with recorded Stripe-shaped responses and records every request.

    Used only for endpoints localstripe does not implement: Checkout Sessions, Billing Meter
    events and customer-portal sessions.
    """

    name = "recorded"

    def __init__(self, responses: dict[tuple[str, str], dict[str, Any]]) -> None:
        super().__init__()
        self.responses = responses
        self.requests: list[dict[str, Any]] = []

    def request(self, method, url, headers, post_data=None, *, _usage=None):  # noqa: ANN001, ANN201
        path = urllib.parse.urlparse(url).path
        self.requests.append(
            {
                "method": method.upper(),
                "path": path,
                "headers": dict(headers or {}),
                "params": urllib.parse.parse_qs(post_data or ""),
            }
        )
        body = self.responses[(method.upper(), path)]
        return json.dumps(body), 200, {"request-id": "req_recorded"}

    def close(self) -> None:
        return None


def test_checkout_session_is_created_with_an_idempotency_key_recorded_boundary():
    recorded = RecordedStripe(
        {
            ("POST", "/v1/checkout/sessions"): {
                "id": "cs_test_recorded",
                "object": "checkout.session",
                "mode": "payment",
                "url": "https://checkout.stripe.com/c/pay/cs_test_recorded",
                "payment_status": "unpaid",
            }
        }
    )
    gateway = StripeGateway(api_key="sk_test_recorded", http_client=recorded)
    session = gateway.checkout_session_create(
        topup_id="top1",
        customer_id="cus_1",
        tenant_id="t-9",
        amount_cents=5000,
        currency="usd",
        success_url="https://ccgsc.example/billing/?ok",
        cancel_url="https://ccgsc.example/billing/",
    )
    assert session.url.endswith("cs_test_recorded")
    (request,) = recorded.requests
    assert request["headers"]["Idempotency-Key"] == "checkout:top1"
    assert request["headers"]["Stripe-Version"] == "2026-10-28.endive"
    assert request["params"]["mode"] == ["payment"]
    assert request["params"]["line_items[0][price_data][unit_amount]"] == ["5000"]
    assert request["params"]["metadata[tenant_id]"] == ["t-9"]


def test_meter_event_and_portal_recorded_boundary():
    recorded = RecordedStripe(
        {
            ("POST", "/v1/billing/meter_events"): {
                "object": "billing.meter_event",
                "event_name": "ccgsc_usage_cents",
                "identifier": "usage-7",
                "payload": {},
                "created": 1,
                "livemode": False,
            },
            ("POST", "/v1/billing_portal/sessions"): {
                "id": "bps_1",
                "object": "billing_portal.session",
                "url": "https://billing.stripe.com/p/session/bps_1",
            },
        }
    )
    gateway = StripeGateway(api_key="sk_test_recorded", http_client=recorded)
    gateway.meter_event_create(
        event_name="ccgsc_usage_cents", customer_id="cus_1", value=40, identifier="usage-7"
    )
    url = gateway.portal_session_create(
        customer_id="cus_1", return_url="https://ccgsc.example/billing/"
    )
    assert url.startswith("https://billing.stripe.com/")
    meter, portal = recorded.requests
    assert meter["headers"]["Idempotency-Key"] == "meter:usage-7"
    assert meter["params"]["payload[value]"] == ["40"]
    assert meter["params"]["payload[stripe_customer_id]"] == ["cus_1"]
    assert portal["params"]["customer"] == ["cus_1"]


@pytest.mark.django_db
def test_admin_starts_an_enterprise_contract_in_stripe(
    localstripe_url, gateway, tenant, settings, monkeypatch
):
    from billing import stripe_gateway
    from billing.models import BillingProfile
    from tests.factories import UserFactory

    settings.STRIPE_SECRET_KEY = "sk_test_suite"
    settings.STRIPE_API_BASE = localstripe_url
    monkeypatch.setattr(stripe_gateway, "gateway", lambda: localstripe_gateway(localstripe_url))
    product = gateway.client.v1.products.create(params={"name": "CCGSC Enterprise"})
    plan = gateway.client.v1.plans.create(
        params={"amount": 250000, "currency": "usd", "interval": "month", "product": product.id}
    )
    admin_user = UserFactory(is_staff=True, is_superuser=True)
    customer = gateway.customer_create(
        tenant_id=str(tenant.pk), name=tenant.name, email="cfo@example.org"
    )
    profile = profiles.billing_profile(tenant=tenant)
    profile.stripe_customer_id = customer
    profile.save()
    card = gateway.payment_method_attach(customer_id=customer, card=CARD)
    profile = contracts.enterprise_subscription_start(
        tenant=tenant,
        actor=admin_user,
        email="cfo@example.org",
        price_id=plan.id,
        payment_method=card,
    )
    tenant.refresh_from_db()
    assert tenant.tier == Tier.ENTERPRISE
    assert profile.stripe_customer_id.startswith("cus_")
    assert profile.stripe_subscription_id.startswith("sub_")
    again = contracts.enterprise_subscription_start(
        tenant=tenant, actor=admin_user, email="x@example.org", price_id=plan.id
    )
    assert again.stripe_subscription_id == profile.stripe_subscription_id
    assert BillingProfile.objects.for_tenant(tenant).count() == 1


def test_invoice_billed_contract_subscription_recorded_boundary():
    """localstripe has no invoice-collection subscriptions: checked at the boundary."""
    recorded = RecordedStripe(
        {
            ("POST", "/v1/subscriptions"): {
                "id": "sub_recorded",
                "object": "subscription",
                "status": "active",
            }
        }
    )
    gateway = StripeGateway(api_key="sk_test_recorded", http_client=recorded)
    assert (
        gateway.subscription_create(customer_id="cus_1", price_id="price_1", tenant_id="t-5")
        == "sub_recorded"
    )
    (request,) = recorded.requests
    assert request["params"]["items[0][price]"] == ["price_1"]  # Prices, not the legacy plan
    assert not any("plan" in name for name in request["params"])
    assert request["params"]["collection_method"] == ["send_invoice"]
    assert request["params"]["days_until_due"] == ["30"]
    assert request["headers"]["Idempotency-Key"] == "subscription:t-5:price_1"


@pytest.mark.django_db
def test_billing_page_lists_the_tenants_stripe_invoices(
    localstripe_url, gateway, tenant, owner, client, settings
):
    settings.STRIPE_SECRET_KEY = "sk_test_suite"
    settings.STRIPE_API_BASE = localstripe_url
    customer = gateway.customer_create(
        tenant_id=str(tenant.pk), name=tenant.name, email="inv@example.org"
    )
    card = gateway.payment_method_attach(customer_id=customer, card=CARD)
    product = gateway.client.v1.products.create(params={"name": "CCGSC Enterprise"})
    plan = gateway.client.v1.plans.create(
        params={"amount": 1234, "currency": "usd", "interval": "month", "product": product.id}
    )
    gateway.subscription_create(
        customer_id=customer, price_id=plan.id, tenant_id=str(tenant.pk), payment_method=card
    )
    profile = profiles.billing_profile(tenant=tenant)
    profile.stripe_customer_id = customer
    profile.save()
    client.force_login(owner)
    page = client.get("/billing/").content.decode()
    assert "TEST MODE" not in page
    assert "$12.34" in page
    assert "paid" in page


@pytest.mark.django_db
def test_approved_payout_is_transferred_through_connect_recorded_boundary(settings, monkeypatch):
    """localstripe has no Connect transfers: the gateway call is checked with a recorded response."""
    from billing import stripe_gateway
    from billing.models import Payout
    from billing.tasks import payout_transfer
    from jobs import dispatch

    recorded = RecordedStripe(
        {("POST", "/v1/transfers"): {"id": "tr_recorded", "object": "transfer", "amount": 1500}}
    )
    settings.STRIPE_SECRET_KEY = "sk_test_recorded"
    monkeypatch.setattr(
        stripe_gateway,
        "gateway",
        lambda: StripeGateway(api_key="sk_test_recorded", http_client=recorded),
    )
    contributor, _ = dispatch.contributor_create_anonymous()
    contributor.stripe_account_id = "acct_contributor"
    contributor.save()
    payout = Payout.objects.create(contributor=contributor, amount_cents=1500, status="approved")
    assert payout_transfer.apply(args=[str(payout.pk)]).get() == "tr_recorded"
    assert (
        payout_transfer.apply(args=[str(payout.pk)]).get() == "tr_recorded"
    )  # a retry sends nothing new
    assert len(recorded.requests) == 1
    (request,) = recorded.requests
    assert request["headers"]["Idempotency-Key"] == f"payout:{payout.pk}"
    assert request["params"]["destination"] == ["acct_contributor"]
    payout.refresh_from_db()
    assert payout.stripe_transfer_id == "tr_recorded"
