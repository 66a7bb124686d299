"""The contributor's worker page and profile."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse

from billing import ledger
from billing.models import AccountKind, Payout
from billing.pricing import MIN_PAYOUT_CENTS
from jobs import dispatch, selectors


def contribute(request: HttpRequest) -> HttpResponse:
    """The worker page: join, run kernels in Web Workers, earn credits."""
    user_token = ""
    if request.user.is_authenticated:
        contributor = dispatch.contributor_for_user(user=request.user)
        user_token = dispatch.worker_token_issue(contributor=contributor)
    return render(
        request,
        "worker_frontend/contribute.html",
        {
            "ws_path": "/ws/worker/",
            "anonymous_token_url": reverse("api_contributor_anonymous"),
            "user_token": user_token,
            "local_data_jobs_url": reverse("contribute_local_data_jobs"),
        },
    )


def local_data_jobs(request: HttpRequest) -> JsonResponse:
    """The jobs that train on contributors' own data and the schema each asks for (the worker
    page's "Your local data" section). Nothing about a contributor's data is ever sent here."""
    pool_tenant_id = None
    if request.user.is_authenticated:
        pool_tenant_id = dispatch.contributor_for_user(user=request.user).pool_tenant_id
    jobs = selectors.fl_local_data_jobs_unscoped(pool_tenant_id=pool_tenant_id)
    response = JsonResponse({"jobs": jobs})
    response["Cache-Control"] = "private, no-store"
    return response


@login_required
def contributor_profile(request: HttpRequest) -> HttpResponse:
    """A contributor's credits, earnings and payouts, devices, and a token for edge workers."""
    contributor = dispatch.contributor_for_user(user=request.user)
    credits = ledger.account_get(AccountKind.CONTRIBUTOR_CREDITS, contributor=contributor)
    earnings = ledger.account_get(AccountKind.CONTRIBUTOR_EARNINGS, contributor=contributor)
    context = {
        "contributor": contributor,
        "credits": credits.balance_cents,
        "earnings_cents": earnings.balance_cents,
        "min_payout_cents": MIN_PAYOUT_CENTS,
        "payouts": Payout.objects.filter(contributor=contributor)[:10],
        "workers": contributor.workers.order_by("-last_seen_at")[:20],
        "edge_token": dispatch.worker_token_issue(contributor=contributor),
        "site_url": request.build_absolute_uri("/").rstrip("/"),
    }
    return render(request, "worker_frontend/profile.html", context)
