"""Billing pages: pricing (public), the tenant's billing page, checkout, the Stripe webhook."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import selectors
from billing.contracts import tenant_tier_change
from billing.metering import tenant_balance_cents
from billing.payouts import payout_request as contributor_payout_request
from billing.pricing import PRICES
from billing.profiles import billing_profile
from billing.stripe_gateway import StripeError, gateway
from billing.topups import (
    checkout_start,
    test_checkout_get,
    test_mode_allowed,
    test_mode_checkout_complete,
    topup_amount_cents,
)
from billing.webhooks import WebhookRejected, stripe_webhook_receive
from ccgsc_site.forms import error_text
from jobs.dispatch import contributor_for_user
from tenants.middleware import active_membership_or_404
from tenants.roles import Action, role_allows
from tenants.tiers import POLICIES

logger = logging.getLogger(__name__)
MAX_WEBHOOK_BYTES = 512 * 1024


def pricing(request: HttpRequest) -> HttpResponse:
    """The public pricing page: every tier's limits and prices, from the one table of each."""
    tiers = [{"policy": POLICIES[tier], "price": PRICES[tier]} for tier in POLICIES]
    return render(request, "billing/pricing.html", {"tiers": tiers})


def _billing_context(request: HttpRequest, membership: Any) -> dict[str, Any]:
    tenant = membership.tenant
    client = gateway()
    invoices: list = []
    profile = billing_profile(tenant=tenant)
    if client is not None and profile.stripe_customer_id:
        try:
            invoices = client.invoices_list(customer_id=profile.stripe_customer_id)
        except StripeError:
            logger.exception("listing invoices failed")
            messages.warning(request, "Invoices are unavailable right now.")
    return {
        "tenant": tenant,
        "membership": membership,
        "policy": tenant.policy,
        "price": PRICES[tenant.tier],
        "balance_cents": tenant_balance_cents(tenant=tenant),
        "usage": selectors.usage_by_job(tenant=tenant),
        "entries": selectors.tenant_entries(tenant=tenant)[:50],
        "checkouts": selectors.checkouts_needing_attention(tenant=tenant)[:10],
        "invoices": invoices,
        "test_mode": client is None,
        "can_pay": role_allows(membership.role, Action.MANAGE_BILLING),
        "profile": profile,
        "stripe_events_attention": (
            selectors.stripe_events_attention_count_unscoped() if request.user.is_staff else 0
        ),
    }


@login_required
def billing_page(request: HttpRequest) -> HttpResponse:
    """Balance, buy credits, usage per job and round with cost, invoices, tier and limits."""
    membership = active_membership_or_404(request)
    return render(request, "billing/billing.html", _billing_context(request, membership))


@login_required
@require_POST
def checkout(request: HttpRequest) -> HttpResponse:
    """Start a top-up and send the browser to Stripe Checkout (or the test-mode checkout)."""
    membership = active_membership_or_404(request)
    try:
        start = checkout_start(
            tenant=membership.tenant,
            actor=request.user,
            actor_role=membership.role,
            amount_cents=topup_amount_cents(request.POST.get("amount", "")),
            site_url=request.build_absolute_uri("/").rstrip("/"),
        )
    except PermissionDenied as exc:
        messages.error(request, error_text(exc))
        return redirect("billing")
    except ValidationError as exc:
        messages.error(request, error_text(exc))
        context = _billing_context(request, membership)
        return render(request, "billing/billing.html", context, status=400)
    except StripeError:
        logger.exception("checkout failed")
        messages.error(
            request, "Stripe is unavailable; nothing was charged. Try again in a minute."
        )
        return redirect("billing")
    return redirect(start.url)


def _bad_request(request: HttpRequest, message: str) -> HttpResponse:
    return render(request, "billing/error.html", {"message": message}, status=400)


@login_required
def test_checkout(request: HttpRequest, session_id: str) -> HttpResponse:
    """Test mode only: a stand-in for Stripe Checkout, clearly labelled, for the amount recorded
    when the checkout started (an ``amount`` in the address must agree with it)."""
    membership = active_membership_or_404(request)
    if not test_mode_allowed():
        raise Http404("Test payments are not available here")
    try:
        started = test_checkout_get(tenant=membership.tenant, session_id=session_id)
    except ValidationError:
        raise Http404("No such test checkout") from None
    claimed = request.GET.get("amount") or request.POST.get("amount")
    if claimed is not None and (not claimed.isdigit() or int(claimed) != started.amount_cents):
        return _bad_request(request, "The amount does not match the checkout that was started.")
    if request.method == "POST":
        try:
            test_mode_checkout_complete(
                tenant=membership.tenant,
                actor=request.user,
                actor_role=membership.role,
                session_id=session_id,
            )
        except (ValidationError, PermissionDenied) as exc:
            messages.error(request, error_text(exc))
        else:
            messages.success(request, "Test payment completed: credits added.")
        return redirect("billing")
    return render(
        request,
        "billing/test_checkout.html",
        {"session_id": session_id, "amount_cents": started.amount_cents},
    )


@login_required
@require_POST
def tier_change(request: HttpRequest) -> HttpResponse:
    """Switch between Community FC and FL Core."""
    membership = active_membership_or_404(request)
    try:
        tenant = tenant_tier_change(
            tenant=membership.tenant,
            actor=request.user,
            actor_role=membership.role,
            tier=request.POST.get("tier", ""),
        )
        messages.success(request, f"You are now on {tenant.policy.label}.")
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, error_text(exc))
    return redirect("billing")


@login_required
def portal(request: HttpRequest) -> HttpResponse:
    """Stripe's customer portal (payment methods, invoices)."""
    membership = active_membership_or_404(request)
    client = gateway()
    profile = billing_profile(tenant=membership.tenant)
    if (
        client is None
        or not profile.stripe_customer_id
        or not role_allows(membership.role, Action.MANAGE_BILLING)
    ):
        messages.info(
            request, "The customer portal is available once you have paid through Stripe."
        )
        return redirect("billing")
    try:
        url = client.portal_session_create(
            customer_id=profile.stripe_customer_id,
            return_url=request.build_absolute_uri("/billing/"),
        )
    except StripeError:
        logger.exception("opening the customer portal failed")
        messages.error(
            request,
            "Stripe's customer portal is unavailable right now; nothing changed. "
            "Try again in a few minutes.",
        )
        return redirect("billing")
    return redirect(url)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Verify → store once → handle. Duplicates and unknown types answer 200."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        return JsonResponse(
            {"error": {"code": "not_configured", "message": "webhooks are not configured"}},
            status=404,
        )
    if len(request.body) > MAX_WEBHOOK_BYTES:
        return JsonResponse(
            {"error": {"code": "too_large", "message": "payload too large"}}, status=413
        )
    try:
        outcome = stripe_webhook_receive(
            payload=request.body,
            signature=request.headers.get("Stripe-Signature", ""),
            secret=settings.STRIPE_WEBHOOK_SECRET,
        )
    except WebhookRejected as exc:
        return JsonResponse(
            {"error": {"code": "bad_signature", "message": str(exc)[:200]}}, status=400
        )
    return JsonResponse({"received": True, "outcome": outcome})


@login_required
@require_POST
def payout_request(request: HttpRequest) -> HttpResponse:
    """A contributor asks to be paid their earnings."""
    try:
        contributor_payout_request(contributor=contributor_for_user(user=request.user))
        messages.success(request, "Payout requested; an administrator will review it.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("contributor_profile")


def leaderboard(request: HttpRequest) -> HttpResponse:
    """Public leaderboard: recent average credit, all-time, teams."""
    return render(request, "billing/leaderboard.html", {"board": selectors.leaderboard()})
