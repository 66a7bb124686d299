"""Signed Stripe-shaped webhook payloads for tests (Stripe's own signature scheme)."""

from __future__ import annotations

import json
import time
import uuid

from billing.stripe_gateway import webhook_signature

WEBHOOK_SECRET = "whsec_test_secret_for_the_suite"


def event(kind: str, obj: dict, event_id: str | None = None) -> dict:
    """A Stripe event envelope."""
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "type": kind,
        "livemode": False,
        "data": {"object": obj},
    }


def checkout_completed(
    *,
    tenant_id: str,
    amount_cents: int,
    session_id: str | None = None,
    currency: str = "usd",
    payment_status: str = "paid",
    kind: str = "checkout.session.completed",
    payment_intent: str | None = None,
) -> dict:
    """A Checkout Session event (API version 2026-10-28): ``checkout.session.completed`` for a
    paid top-up by default; ``payment_status`` "unpaid" for a delayed payment method, whose
    outcome later arrives as ``checkout.session.async_payment_succeeded`` or ``_failed``."""
    session = session_id or f"cs_test_{uuid.uuid4().hex[:24]}"
    return event(
        kind,
        {
            "id": session,
            "object": "checkout.session",
            "mode": "payment",
            "payment_status": payment_status,
            "status": "complete",
            "amount_total": amount_cents,
            "amount_subtotal": amount_cents,
            "currency": currency,
            "client_reference_id": tenant_id,
            "customer": "cus_suite",
            "payment_intent": payment_intent or f"pi_{uuid.uuid4().hex[:20]}",
            "metadata": {"tenant_id": tenant_id, "amount_cents": str(amount_cents)},
        },
    )


def checkout_recorded(tenant, amount_cents: int, *, currency: str = "usd") -> str:  # noqa: ANN001
    """The row ``checkout_start`` writes when it creates a session; returns the session id."""
    from billing.models import Checkout

    session_id = f"cs_test_{uuid.uuid4().hex[:24]}"
    Checkout.objects.create(
        tenant=tenant, session_id=session_id, amount_cents=amount_cents, currency=currency
    )
    return session_id


def paid_checkout(tenant, amount_cents: int, **extra) -> dict:  # noqa: ANN001, ANN003
    """A checkout we created, and Stripe's event saying it was paid."""
    return checkout_completed(
        tenant_id=str(tenant.pk),
        amount_cents=amount_cents,
        session_id=checkout_recorded(tenant, amount_cents),
        **extra,
    )


def deliver(client, payload: dict, *, secret: str = WEBHOOK_SECRET, signature: str | None = None):  # noqa: ANN001, ANN201
    """POST a webhook the way Stripe does: raw JSON body and a Stripe-Signature header."""
    body = json.dumps(payload)
    header = signature or webhook_signature(payload=body, secret=secret, timestamp=int(time.time()))
    return client.post(
        "/billing/webhooks/stripe/",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
