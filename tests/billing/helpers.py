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


def checkout_completed(*, tenant_id: str, amount_cents: int, session_id: str | None = None) -> dict:
    """A `checkout.session.completed` event for a paid top-up."""
    session = session_id or f"cs_test_{uuid.uuid4().hex[:24]}"
    return event(
        "checkout.session.completed",
        {
            "id": session,
            "object": "checkout.session",
            "mode": "payment",
            "payment_status": "paid",
            "status": "complete",
            "amount_total": amount_cents,
            "currency": "usd",
            "client_reference_id": tenant_id,
            "payment_intent": f"pi_{uuid.uuid4().hex[:20]}",
            "metadata": {"tenant_id": tenant_id, "amount_cents": str(amount_cents)},
        },
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
