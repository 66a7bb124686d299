"""The tenant's home page. It sits at the site level because it shows several apps at once
(tenants, jobs): the apps themselves never import each other upward (tests/test_architecture.py).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from jobs.selectors import job_list
from tenants import selectors


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The active tenant's home: tier, limits, and where to go next."""
    membership = request.active_membership  # type: ignore[attr-defined]
    if not membership:
        return render(request, "tenants/no_tenant.html")
    tenant = membership.tenant
    jobs = job_list(tenant=tenant)
    context = {
        "tenant": tenant,
        "membership": membership,
        "policy": tenant.policy,
        "jobs": jobs[:10],
        "job_count": jobs.count(),
        "member_count": selectors.membership_list(tenant=tenant).count(),
        "key_count": selectors.api_key_list(tenant=tenant).filter(revoked_at__isnull=True).count(),
    }
    return render(request, "tenants/dashboard.html", context)
