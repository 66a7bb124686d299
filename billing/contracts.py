"""Tiers and contracts: self-serve tier changes, FL Enterprise subscriptions (admin)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from billing import stripe_gateway
from billing.models import BillingProfile
from billing.profiles import billing_profile, customer_ensure
from tenants.models import Tenant, User
from tenants.roles import Action
from tenants.services import audit_record, require_role
from tenants.tiers import Tier

SELF_SERVE_TIERS = (Tier.COMMUNITY, Tier.CORE)


@transaction.atomic
def tenant_tier_change(*, tenant: Tenant, actor: User, actor_role: str, tier: str) -> Tenant:
    """Owners move between Community and FL Core themselves; Enterprise is a contract (admin)."""
    require_role(membership_role=actor_role, action=Action.MANAGE_BILLING)
    if tier not in SELF_SERVE_TIERS:
        raise ValidationError(
            "FL Enterprise is a contract: contact us and an administrator sets it up."
        )
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if locked.tier == Tier.ENTERPRISE:
        raise ValidationError("Enterprise contracts are changed by an administrator.")
    previous = locked.tier
    locked.tier = tier
    locked.save(update_fields=["tier"])
    audit_record(
        tenant=locked,
        actor=actor,
        action="tenant.tier_changed",
        target=locked.name,
        previous=previous,
        tier=tier,
    )
    return locked


@transaction.atomic
def enterprise_subscription_start(
    *, tenant: Tenant, actor: User, email: str, price_id: str, payment_method: str | None = None
) -> BillingProfile:
    """Admin: put a tenant on an FL Enterprise contract (Stripe customer + subscription)."""
    client = stripe_gateway.gateway()
    if client is None:
        raise ValidationError("Stripe is not configured: Enterprise contracts need it.")
    if not price_id:
        raise ValidationError("Set STRIPE_ENTERPRISE_PRICE_ID to the contract's price.")
    profile = (
        BillingProfile.objects.for_tenant(tenant).select_for_update().filter(tenant=tenant).first()
    )
    profile = profile or billing_profile(tenant=tenant)
    customer_ensure(client=client, profile=profile, email=email)
    if not profile.stripe_subscription_id:
        profile.stripe_subscription_id = client.subscription_create(
            customer_id=profile.stripe_customer_id,
            price_id=price_id,
            tenant_id=str(tenant.pk),
            payment_method=payment_method,
        )
    profile.save(update_fields=["stripe_customer_id", "stripe_subscription_id"])
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.ENTERPRISE)
    audit_record(
        tenant=tenant,
        actor=actor,
        action="billing.enterprise_started",
        target=tenant.name,
        subscription=profile.stripe_subscription_id,
    )
    return profile
