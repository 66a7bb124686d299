"""Job pages (list, create, director, result downloads) and kernel module downloads."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from ccgsc_site.forms import add_validation_errors, error_text
from jobs import dispatch, exports, selectors, services
from jobs.forms import JobForm
from jobs.kernels import KernelUnavailable, kernel_module_bytes
from tenants.middleware import active_membership_or_404


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    """The active tenant's jobs."""
    membership = active_membership_or_404(request)
    jobs = selectors.job_list(tenant=membership.tenant)[:200]
    return render(request, "jobs/job_list.html", {"jobs": jobs, "tenant": membership.tenant})


@login_required
def job_create(request: HttpRequest) -> HttpResponse:
    """Create and start a job."""
    membership = active_membership_or_404(request)
    tenant = membership.tenant
    form = JobForm(request.POST or None, kernels=selectors.kernel_list(tenant=tenant))
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        try:
            job = services.job_create(
                tenant=tenant,
                actor=request.user,
                actor_role=membership.role,
                spec=services.JobSpec(**data),
            )
        except ValidationError as exc:
            add_validation_errors(form, exc)
        except PermissionDenied as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Job “{job.name}” started with {job.task_count} tasks.")
            return redirect("job_detail", job_id=job.pk)
    return render(
        request,
        "jobs/job_create.html",
        {"form": form, "tenant": tenant},
        status=400 if form.errors else 200,
    )


@login_required
def job_detail(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """The director: live state over WebSocket, with controls."""
    membership = active_membership_or_404(request)
    job = selectors.job_get(tenant=membership.tenant, job_id=job_id)
    state = selectors.job_state(tenant=membership.tenant, job_id=job.pk)
    return render(
        request,
        "jobs/job_detail.html",
        {
            "job": job,
            "state": state,
            "membership": membership,
        },
    )


@login_required
@require_POST
def job_control(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """Start, pause, resume or cancel from a form (the director page also does it live)."""
    membership = active_membership_or_404(request)
    try:
        services.job_control(
            tenant=membership.tenant,
            job_id=job_id,
            role=membership.role,
            action=request.POST.get("action", ""),
        )
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, error_text(exc))
    return redirect("job_detail", job_id=job_id)


@login_required
@require_GET
def job_result(request: HttpRequest, job_id: uuid.UUID, fmt: str) -> HttpResponse:
    """Download a job's result as JSON or CSV."""
    membership = active_membership_or_404(request)
    job = selectors.job_get(tenant=membership.tenant, job_id=job_id)
    if fmt == "csv":
        return exports.job_result_csv_response(job)
    response = JsonResponse(exports.job_result_document(job), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}.json"'
    return response


@require_GET
def kernel_module(request: HttpRequest, sha256: str) -> HttpResponse:
    """A kernel module by hash, for workers (``Authorization: Worker <token>``)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Worker" or dispatch.worker_token_verify(token=token.strip()) is None:
        return JsonResponse(
            {"error": {"code": "unauthorized", "message": "worker token required"}}, status=401
        )
    etag = f'"{sha256}"'
    if request.headers.get("If-None-Match") == etag:
        return HttpResponse(status=304)
    kernel = selectors.kernel_get_by_sha256_unscoped(sha256=sha256)
    if kernel is None:
        raise Http404("No such kernel")
    try:
        data = kernel_module_bytes(kernel)
    except KernelUnavailable as exc:
        raise Http404(str(exc)) from exc
    response = HttpResponse(data, content_type="application/wasm")
    response["ETag"] = etag
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response
