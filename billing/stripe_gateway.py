"""The only module that talks to Stripe.

One ``StripeClient`` with a pinned API version and network retries on; every create carries an
idempotency key derived from our own ids, so a retried call never creates a second object.
With no secret key configured, ``gateway()`` returns None and billing runs in test mode.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import stripe  # noqa: TID251 - this module is the gateway
from django.conf import settings

API_VERSION = "2026-10-28.endive"
MAX_NETWORK_RETRIES = 2

SignatureError = stripe.SignatureVerificationError
StripeError = stripe.StripeError


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str


class StripeGateway:
    """Thin, typed calls over ``stripe.StripeClient``."""

    def __init__(
        self, *, api_key: str, api_base: str | None = None, http_client: Any = None
    ) -> None:
        base = {"api": api_base} if api_base else None
        self.client = stripe.StripeClient(
            api_key,
            stripe_version=API_VERSION,
            max_network_retries=MAX_NETWORK_RETRIES,
            base_addresses=base,
            http_client=http_client,
        )

    def customer_create(self, *, tenant_id: str, name: str, email: str) -> str:
        """A Stripe customer for a tenant.

        Stripe refuses an idempotency key reused with different parameters, so the key carries a
        digest of them: a retry of the same call reuses it, a renamed tenant gets a new one.
        """
        params = {"name": name, "email": email, "metadata": {"tenant_id": tenant_id}}
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        customer = self.client.v1.customers.create(
            params=params, options={"idempotency_key": f"customer:{tenant_id}:{digest}"}
        )
        return customer.id

    def checkout_session_create(
        self,
        *,
        topup_id: str,
        customer_id: str,
        tenant_id: str,
        amount_cents: int,
        currency: str,
        success_url: str,
        cancel_url: str,
    ) -> CheckoutSession:
        """A Checkout Session in payment mode for a balance top-up."""
        session = self.client.v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "customer": customer_id,
                "client_reference_id": tenant_id,
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": currency,
                            "unit_amount": amount_cents,
                            "product_data": {"name": "CCGSC prepaid credit"},
                        },
                    }
                ],
                "metadata": {
                    "tenant_id": tenant_id,
                    "topup_id": topup_id,
                    "amount_cents": str(amount_cents),
                },
                "payment_intent_data": {"metadata": {"tenant_id": tenant_id, "topup_id": topup_id}},
                "success_url": success_url,
                "cancel_url": cancel_url,
            },
            options={"idempotency_key": f"checkout:{topup_id}"},
        )
        return CheckoutSession(id=session.id, url=session.url)

    def refund_create(self, *, payment_intent: str, amount_cents: int, refund_key: str) -> str:
        """Refund (part of) a payment; returns the refund id."""
        refund = self.client.v1.refunds.create(
            params={"payment_intent": payment_intent, "amount": amount_cents},
            options={"idempotency_key": f"refund:{refund_key}"},
        )
        return refund.id

    def meter_event_create(
        self, *, event_name: str, customer_id: str, value: int, identifier: str
    ) -> None:
        """Report metered usage to a Stripe Billing Meter (``identifier`` dedupes on Stripe's side)."""
        self.client.v1.billing.meter_events.create(
            params={
                "event_name": event_name,
                "identifier": identifier,
                "payload": {"stripe_customer_id": customer_id, "value": str(value)},
            },
            options={"idempotency_key": f"meter:{identifier}"},
        )

    def subscription_create(
        self, *, customer_id: str, price_id: str, tenant_id: str, payment_method: str | None = None
    ) -> str:
        """An Enterprise contract subscription; returns its id.

        With a payment method the card is charged each period; without one Stripe sends an invoice
        payable within 30 days (the usual contract terms).
        """
        params: dict[str, Any] = {
            "customer": customer_id,
            "items": [{"price": price_id}],
            "metadata": {"tenant_id": tenant_id},
        }
        if payment_method:
            self.client.v1.customers.update(
                customer_id, params={"invoice_settings": {"default_payment_method": payment_method}}
            )
        else:
            params.update(collection_method="send_invoice", days_until_due=30)
        subscription = self.client.v1.subscriptions.create(
            params=params, options={"idempotency_key": f"subscription:{tenant_id}:{price_id}"}
        )
        return subscription.id

    def invoices_list(self, *, customer_id: str, limit: int = 24) -> list[dict[str, Any]]:
        """A customer's invoices, newest first, as plain dicts for the billing page."""
        invoices = self.client.v1.invoices.list(params={"customer": customer_id, "limit": limit})
        return [
            {
                "id": inv.id,
                "number": getattr(inv, "number", None),
                "status": inv.status,
                "amount_due": inv.amount_due,
                "amount_paid": getattr(inv, "amount_paid", 0),
                "currency": inv.currency,
                "created": inv.created,
                "hosted_invoice_url": getattr(inv, "hosted_invoice_url", None),
            }
            for inv in invoices.data
        ]

    def payments_list(self, *, created_after: int | None = None) -> list[dict[str, Any]]:
        """Succeeded payment intents (every page), as plain dicts for reconciliation."""
        params: dict[str, Any] = {"limit": 100}
        if created_after is not None:
            params["created"] = {"gte": created_after}
        return [
            {
                "id": intent.id,
                "amount": getattr(intent, "amount_received", None) or intent.amount,
                "currency": intent.currency,
                "metadata": (intent.to_dict().get("metadata") or {}),
            }
            for intent in self.client.v1.payment_intents.list(params=params).auto_paging_iter()
            if intent.status == "succeeded"
        ]

    def refunds_list(self, *, created_after: int | None = None) -> list[dict[str, Any]]:
        """Refunds (every page), as plain dicts for reconciliation."""
        params: dict[str, Any] = {"limit": 100}
        if created_after is not None:
            params["created"] = {"gte": created_after}
        return [
            {
                "id": refund.id,
                "amount": refund.amount,
                "currency": refund.currency,
                "payment_intent": getattr(refund, "payment_intent", None),
                "status": refund.status,
            }
            for refund in self.client.v1.refunds.list(params=params).auto_paging_iter()
        ]

    def invoices_paid_list(self, *, created_after: int | None = None) -> list[dict[str, Any]]:
        """Paid invoices (every page), as plain dicts for reconciliation."""
        params: dict[str, Any] = {"limit": 100}
        if created_after is not None:
            params["created"] = {"gte": created_after}
        return [
            {
                "id": invoice.id,
                "amount_paid": invoice.amount_paid,
                "currency": invoice.currency,
                "customer": invoice.customer,
            }
            for invoice in self.client.v1.invoices.list(params=params).auto_paging_iter()
            if invoice.status == "paid"
        ]

    def portal_session_create(self, *, customer_id: str, return_url: str) -> str:
        """A customer-portal link (payment methods, invoices)."""
        session = self.client.v1.billing_portal.sessions.create(
            params={"customer": customer_id, "return_url": return_url}
        )
        return session.url

    def transfer_create(
        self, *, payout_id: str, amount_cents: int, currency: str, destination: str
    ) -> str:
        """A Stripe Connect transfer paying out a contributor."""
        transfer = self.client.v1.transfers.create(
            params={
                "amount": amount_cents,
                "currency": currency,
                "destination": destination,
                "metadata": {"payout_id": payout_id},
            },
            options={"idempotency_key": f"payout:{payout_id}"},
        )
        return transfer.id

    def payment_method_attach(self, *, customer_id: str, card: dict[str, Any]) -> str:
        """Create a card payment method (a token from Stripe.js, or test card details in a test
        environment) and attach it to a customer; returns its id."""
        method = self.client.v1.payment_methods.create(params={"type": "card", "card": card})
        self.client.v1.payment_methods.attach(method.id, params={"customer": customer_id})
        return method.id

    def payment_intent_charge(
        self,
        *,
        customer_id: str,
        payment_method: str,
        amount_cents: int,
        currency: str,
        key: str,
        tenant_id: str,
    ) -> tuple[str, str]:
        """Charge a saved card off-session (automatic top-up); returns (payment intent, status)."""
        intent = self.client.v1.payment_intents.create(
            params={
                "customer": customer_id,
                "payment_method": payment_method,
                "amount": amount_cents,
                "currency": currency,
                "confirm": True,
                "off_session": True,
                "metadata": {"tenant_id": tenant_id, "topup_id": key},
            },
            options={"idempotency_key": f"intent:{key}"},
        )
        return intent.id, intent.status


def webhook_event(*, payload: bytes, signature: str, secret: str) -> dict[str, Any]:
    """Verify a webhook's signature and return the event as a plain dict (SignatureError if bad)."""
    event = stripe.Webhook.construct_event(payload, signature, secret)
    return event.to_dict()


def webhook_signature(*, payload: str, secret: str, timestamp: int) -> str:
    """A ``Stripe-Signature`` header for ``payload`` (Stripe's own scheme; used by tests)."""
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload}", secret)
    return f"t={timestamp},v1={signature}"


def gateway() -> StripeGateway | None:
    """The configured gateway, or None in test mode (no secret key)."""
    if not settings.STRIPE_SECRET_KEY:
        return None
    return StripeGateway(
        api_key=settings.STRIPE_SECRET_KEY, api_base=settings.STRIPE_API_BASE or None
    )
