"""Pages of federated analytics jobs: the creation form and the results of each round."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from ccgsc_site.forms import add_validation_errors
from jobs import selectors
from jobs.analytics_forms import AnalyticsJobForm
from jobs.analytics_selectors import analytics_query_get, analytics_result_list
from jobs.services.analytics_creation import AnalyticsJobSpec, analytics_job_create
from jobs.services.fl_privacy import fl_privacy_state
from tenants.middleware import active_membership_or_404
from tenants.tiers import JobKind


@login_required
def analytics_job_new(request: HttpRequest) -> HttpResponse:
    """Create and start a federated analytics job."""
    membership = active_membership_or_404(request)
    tenant = membership.tenant
    form = AnalyticsJobForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = analytics_job_create(
                tenant=tenant,
                actor=request.user,
                actor_role=membership.role,
                spec=AnalyticsJobSpec(**form.spec_fields()),
            )
        except ValidationError as exc:
            add_validation_errors(form, exc)
        except PermissionDenied as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Analytics job “{job.name}” started.")
            return redirect("analytics_job_results", job_id=job.pk)
    return render(
        request,
        "jobs/analytics_job_create.html",
        {
            "form": form,
            "policy": tenant.policy,
            "allowed": tenant.policy.allows_job_kind(JobKind.ANALYTICS),
        },
        status=400 if form.errors else 200,
    )


@login_required
def analytics_job_results(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """An analytics job's query and each round's statistics, with a histogram per column."""
    membership = active_membership_or_404(request)
    job = selectors.job_get(tenant=membership.tenant, job_id=job_id)
    if job.kind != JobKind.ANALYTICS:
        raise Http404("No such analytics job")
    results = list(analytics_result_list(tenant=membership.tenant, job=job)[:20])
    latest = results[0] if results else None
    columns = []
    if latest is not None:
        for index, stats in enumerate(latest.statistics):
            noise = latest.noise_std[index] if latest.noise_std else None
            columns.append({"stats": stats, "noise": noise, "index": index})
    return render(
        request,
        "jobs/analytics_results.html",
        {
            "job": job,
            "query": analytics_query_get(tenant=membership.tenant, job=job),
            "results": results,
            "latest": latest,
            "columns": columns,
            "chart_data": [
                {
                    "name": c["stats"]["name"],
                    "edges": c["stats"]["edges"],
                    "counts": c["stats"]["histogram"],
                }
                for c in columns
            ],  # fmt: skip
            "privacy": fl_privacy_state(job=job),
        },
    )
