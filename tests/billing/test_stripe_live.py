"""Against Stripe's real test mode (collected only when STRIPE_TEST_SECRET_KEY is set)."""

from __future__ import annotations

import os
import uuid

from billing.stripe_gateway import StripeGateway


def test_customer_checkout_and_refund_in_stripe_test_mode():
    gateway = StripeGateway(api_key=os.environ["STRIPE_TEST_SECRET_KEY"])
    tenant_id = f"live-{uuid.uuid4().hex[:8]}"
    customer = gateway.customer_create(
        tenant_id=tenant_id, name="CCGSC live test", email="live@example.org"
    )
    session = gateway.checkout_session_create(
        topup_id=tenant_id,
        customer_id=customer,
        tenant_id=tenant_id,
        amount_cents=500,
        currency="usd",
        success_url="https://example.org/ok",
        cancel_url="https://example.org/cancel",
    )
    assert session.url.startswith("https://checkout.stripe.com/")
    method = gateway.payment_method_attach(customer_id=customer, card={"token": "tok_visa"})
    intent, status = gateway.payment_intent_charge(
        customer_id=customer,
        payment_method=method,
        amount_cents=500,
        currency="usd",
        key=f"auto-{tenant_id}",
        tenant_id=tenant_id,
    )
    assert status == "succeeded"
    assert gateway.refund_create(
        payment_intent=intent, amount_cents=500, refund_key=tenant_id
    ).startswith("re_")
