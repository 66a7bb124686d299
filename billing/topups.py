"""Top-ups: a Checkout Session we record (or the labelled local test checkout), credited once.

Only checkouts we created are credited, and only with the amount and currency we priced: the
signed event says what Stripe collected, our row says what we asked for, and they must agree.
Delayed payment methods (bank debits) complete unpaid and are credited when
``checkout.session.async_payment_succeeded`` arrives, or marked failed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from billing import ledger, stripe_gateway
from billing.ledger import Line
from billing.metering import usage_charge_unpaid
from billing.models import AccountKind, Checkout, CheckoutStatus, EntryKind, JournalEntry
from billing.money import CURRENCY, format_cents
from billing.profiles import billing_profile, customer_ensure
from tenants.models import Tenant, User
from tenants.roles import Action
from tenants.services import require_role

MIN_TOPUP_CENTS = 500
MAX_TOPUP_CENTS = 1_000_000
TEST_SESSION_PREFIX = "cs_test_local_"


@dataclass(frozen=True, slots=True)
class CheckoutStart:
    url: str
    session_id: str
    test_mode: bool


@dataclass(frozen=True, slots=True)
class TopupOutcome:
    """What a checkout event did; a ``problem`` means it needs a person (nothing was credited)."""

    outcome: str
    problem: str = ""


def topup_amount_cents(text: str) -> int:
    """Parse a top-up amount typed in dollars ("25", "25.50") into cents, or raise ValidationError."""
    invalid = ValidationError("Enter the amount in dollars, for example 25 or 25.50.")
    try:
        dollars = Decimal(str(text).strip())
    except InvalidOperation:
        raise invalid from None
    if not dollars.is_finite():
        raise invalid
    if not MIN_TOPUP_CENTS <= dollars * 100 <= MAX_TOPUP_CENTS:
        raise ValidationError(
            f"Top up between {format_cents(MIN_TOPUP_CENTS)} and {format_cents(MAX_TOPUP_CENTS)}."
        )
    cents = dollars * 100
    if cents != cents.to_integral_value():
        raise invalid
    return int(cents)


def test_mode_allowed() -> bool:
    """Whether owners may complete local test checkouts (no Stripe key, and not in production
    unless the deployment explicitly allows it for a demo)."""
    return stripe_gateway.gateway() is None and settings.BILLING_TEST_MODE_ALLOWED


def checkout_start(
    *, tenant: Tenant, actor: User, actor_role: str, amount_cents: int, site_url: str
) -> CheckoutStart:
    """Start a top-up: a Stripe Checkout Session (or the local test-mode checkout), recorded."""
    require_role(membership_role=actor_role, action=Action.MANAGE_BILLING)
    if not MIN_TOPUP_CENTS <= amount_cents <= MAX_TOPUP_CENTS:
        raise ValidationError(
            {
                "amount_cents": f"Top up between {format_cents(MIN_TOPUP_CENTS)} and {format_cents(MAX_TOPUP_CENTS)}."
            }
        )
    topup_id = uuid.uuid4().hex
    client = stripe_gateway.gateway()
    if client is None:
        if not settings.BILLING_TEST_MODE_ALLOWED:
            raise ValidationError("Payments are not configured on this server yet.")
        session_id = f"{TEST_SESSION_PREFIX}{topup_id}"
        Checkout.objects.create(
            tenant=tenant, session_id=session_id, amount_cents=amount_cents, test_mode=True
        )
        return CheckoutStart(
            url=f"{site_url}/billing/test-checkout/{session_id}/",
            session_id=session_id,
            test_mode=True,
        )
    profile = billing_profile(tenant=tenant)
    customer_ensure(client=client, profile=profile, email=actor.email)
    session = client.checkout_session_create(
        topup_id=topup_id,
        customer_id=profile.stripe_customer_id,
        tenant_id=str(tenant.pk),
        amount_cents=amount_cents,
        currency=CURRENCY,
        success_url=f"{site_url}/billing/?topup=success",
        cancel_url=f"{site_url}/billing/?topup=cancelled",
    )
    Checkout.objects.create(
        tenant=tenant, session_id=session.id, amount_cents=amount_cents, currency=CURRENCY
    )
    return CheckoutStart(url=session.url, session_id=session.id, test_mode=False)


@transaction.atomic
def topup_fulfil(
    *, session_id: str, tenant_id: str, amount_cents: int, payment_intent: str = ""
) -> JournalEntry:
    """Credit a paid top-up to the tenant's balance, once per session, then charge what waited."""
    tenant = Tenant.objects.get(pk=tenant_id)
    entry, created = ledger.entry_post(
        key=f"topup:{session_id}",
        kind=EntryKind.TOPUP,
        tenant=tenant,
        external_ref=payment_intent,
        memo=f"top-up {format_cents(amount_cents)}",
        lines=[
            Line(ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant), amount_cents),
            Line(ledger.account_get(AccountKind.STRIPE_CLEARING), -amount_cents),
        ],
    )
    if created:
        usage_charge_unpaid(tenant=tenant)
    return entry


def _checkout_credit(checkout: Checkout, *, payment_intent: str) -> TopupOutcome:
    """Credit a locked, verified checkout (once)."""
    entry = topup_fulfil(
        session_id=checkout.session_id,
        tenant_id=str(checkout.tenant_id),
        amount_cents=checkout.amount_cents,
        payment_intent=payment_intent,
    )
    checkout.status = CheckoutStatus.PAID
    checkout.entry = entry
    checkout.payment_intent = payment_intent
    checkout.problem = ""
    checkout.save(update_fields=["status", "entry", "payment_intent", "problem", "updated_at"])
    return TopupOutcome("topup")


def _mismatch(checkout: Checkout, session: dict[str, Any]) -> str:
    """Why a paid session does not match the checkout we created ('' when it does)."""
    metadata = session.get("metadata") or {}
    tenant_ref = metadata.get("tenant_id") or session.get("client_reference_id")
    if tenant_ref and str(tenant_ref) != str(checkout.tenant_id):
        return f"session names tenant {str(tenant_ref)[:40]}, we created it for another"
    amount = session.get("amount_total")
    currency = str(session.get("currency") or "").lower()
    if amount != checkout.amount_cents or currency != checkout.currency:
        return (
            f"paid {amount} {currency.upper() or '?'} but we priced "
            f"{checkout.amount_cents} {checkout.currency.upper()}"
        )
    return ""


@transaction.atomic
def checkout_session_event(*, kind: str, session: dict[str, Any]) -> TopupOutcome:
    """Handle ``checkout.session.completed`` / ``async_payment_succeeded`` / ``async_payment_failed``
    under the checkout's row lock, in any order and any number of times."""
    if session.get("mode") != "payment":
        return TopupOutcome("ignored")
    session_id = str(session.get("id") or "")
    checkout = (
        Checkout.objects.unscoped()
        .select_for_update(of=("self",))
        .filter(session_id=session_id)
        .first()
    )
    if checkout is None:
        return TopupOutcome("flagged", f"checkout session {session_id[:60]} was not created here")
    if checkout.status == CheckoutStatus.PAID:
        return TopupOutcome("duplicate")
    problem = _mismatch(checkout, session)
    if problem:
        checkout.status = CheckoutStatus.FLAGGED
        checkout.problem = problem[:300]
        checkout.save(update_fields=["status", "problem", "updated_at"])
        return TopupOutcome("flagged", problem)
    payment_intent = str(session.get("payment_intent") or "")
    if kind == "checkout.session.async_payment_failed":
        checkout.status = CheckoutStatus.FAILED
        checkout.problem = "The bank payment failed: nothing was credited."
        checkout.payment_intent = payment_intent
        checkout.save(update_fields=["status", "problem", "payment_intent", "updated_at"])
        return TopupOutcome("topup_failed")
    if session.get("payment_status") == "paid":
        return _checkout_credit(checkout, payment_intent=payment_intent)
    if kind == "checkout.session.completed" and session.get("payment_status") == "unpaid":
        checkout.status = CheckoutStatus.PENDING
        checkout.payment_intent = payment_intent
        checkout.save(update_fields=["status", "payment_intent", "updated_at"])
        return TopupOutcome("topup_pending")
    return TopupOutcome("ignored")


@transaction.atomic
def test_mode_checkout_complete(
    *, tenant: Tenant, actor: User, actor_role: str, session_id: str
) -> JournalEntry:
    """Test mode only: complete a local checkout as the webhook would, for the amount recorded
    when it started. Refused when Stripe is live or test mode is not allowed here."""
    require_role(membership_role=actor_role, action=Action.MANAGE_BILLING)
    if not test_mode_allowed():
        raise PermissionDenied("Test payments are not allowed on this server.")
    checkout = (
        Checkout.objects.for_tenant(tenant)
        .select_for_update(of=("self",))
        .filter(session_id=session_id, test_mode=True)
        .first()
    )
    if checkout is None:
        raise ValidationError("Not a test-mode checkout.")
    if checkout.status != CheckoutStatus.PAID:
        _checkout_credit(checkout, payment_intent="")
    return checkout.entry


def test_checkout_get(*, tenant: Tenant, session_id: str) -> Checkout:
    """A tenant's local test checkout (ValidationError when there is none)."""
    checkout = (
        Checkout.objects.for_tenant(tenant).filter(session_id=session_id, test_mode=True).first()
    )
    if checkout is None:
        raise ValidationError("Not a test-mode checkout.")
    return checkout
