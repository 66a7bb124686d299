"""Top-ups: a Stripe Checkout Session (or the labelled local test checkout), credited once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from billing import ledger, stripe_gateway
from billing.ledger import Line
from billing.metering import usage_charge_unpaid
from billing.models import AccountKind, EntryKind, JournalEntry
from billing.money import CURRENCY, format_cents
from billing.profiles import billing_profile, customer_ensure
from tenants.models import Tenant, User
from tenants.roles import Action
from tenants.services import require_role

MIN_TOPUP_CENTS = 500
MAX_TOPUP_CENTS = 1_000_000


@dataclass(frozen=True, slots=True)
class CheckoutStart:
    url: str
    session_id: str
    test_mode: bool


def checkout_start(
    *, tenant: Tenant, actor: User, actor_role: str, amount_cents: int, site_url: str
) -> CheckoutStart:
    """Start a top-up: a Stripe Checkout Session (or the local test-mode checkout)."""
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
        session_id = f"cs_test_local_{topup_id}"
        return CheckoutStart(
            url=f"{site_url}/billing/test-checkout/{session_id}/?amount={amount_cents}",
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
    return CheckoutStart(url=session.url, session_id=session.id, test_mode=False)


@transaction.atomic
def topup_fulfil(
    *, session_id: str, tenant_id: str, amount_cents: int, payment_intent: str = ""
) -> JournalEntry:
    """Credit a completed checkout to the tenant's balance, once per session."""
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


def test_mode_checkout_complete(
    *, tenant: Tenant, actor: User, actor_role: str, session_id: str, amount_cents: int
) -> JournalEntry:
    """Test mode only: complete a local checkout as the webhook would. Refused when Stripe is live."""
    require_role(membership_role=actor_role, action=Action.MANAGE_BILLING)
    if stripe_gateway.gateway() is not None:
        raise PermissionDenied("Stripe is configured: payments complete through Stripe only.")
    if (
        not session_id.startswith("cs_test_local_")
        or not MIN_TOPUP_CENTS <= amount_cents <= MAX_TOPUP_CENTS
    ):
        raise ValidationError("Not a test-mode checkout.")
    return topup_fulfil(session_id=session_id, tenant_id=str(tenant.pk), amount_cents=amount_cents)
