"""A tenant's billing profile: its Stripe customer and contract fields."""

from __future__ import annotations

from billing.models import BillingProfile
from billing.stripe_gateway import StripeGateway
from tenants.models import Tenant


def billing_profile(*, tenant: Tenant) -> BillingProfile:
    """The tenant's billing profile (created on first use)."""
    profile, _ = BillingProfile.objects.for_tenant(tenant).get_or_create(tenant=tenant)
    return profile


def customer_ensure(*, client: StripeGateway, profile: BillingProfile, email: str) -> str:
    """The tenant's Stripe customer id, created once and saved on its profile."""
    if not profile.stripe_customer_id:
        profile.stripe_customer_id = client.customer_create(
            tenant_id=str(profile.tenant_id), name=profile.tenant.name, email=email
        )
        profile.save(update_fields=["stripe_customer_id"])
    return profile.stripe_customer_id
