"""Job pages (list, create, director, result and model downloads) and the worker downloads of
kernel modules and model weights."""

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
from jobs.fl_exports import model_version_filename, model_version_response, onnx_response
from jobs.fl_shards import round_closed
from jobs.forms import FlJobForm, JobForm
from jobs.kernels import KernelUnavailable, kernel_module_bytes
from jobs.services.fl_privacy import fl_privacy_state, fl_secagg_plan
from tenants.middleware import active_membership_or_404
from tenants.tiers import JobKind


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
def fl_job_create(request: HttpRequest) -> HttpResponse:
    """Create and start a federated learning job."""
    membership = active_membership_or_404(request)
    tenant = membership.tenant
    form = FlJobForm(request.POST or None)
    allowed = tenant.policy.allows_job_kind(JobKind.FL)
    if request.method == "POST" and form.is_valid():
        try:
            job = services.fl_job_create(
                tenant=tenant,
                actor=request.user,
                actor_role=membership.role,
                spec=services.FlJobSpec(**form.spec_fields()),
            )
        except ValidationError as exc:
            add_validation_errors(form, exc)
        except PermissionDenied as exc:
            form.add_error(None, str(exc))
        else:
            note = f"Training job “{job.name}” created with its initial model."
            config = job.fl_config
            if config.differential_privacy and config.dp_rounds_allowed < config.rounds:
                note += (
                    f" Its privacy budget allows {config.dp_rounds_allowed} of the "
                    f"{config.rounds} planned rounds: the job stops there."
                )
            messages.success(request, note)
            return redirect("job_detail", job_id=job.pk)
    return render(
        request,
        "jobs/fl_job_create.html",
        {"form": form, "tenant": tenant, "fl_allowed": allowed, "policy": tenant.policy},
        status=400 if form.errors else 200,
    )


@login_required
def job_detail(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """The director: live state over WebSocket, with controls (and, for FL, rounds and models)."""
    membership = active_membership_or_404(request)
    job = selectors.job_get(tenant=membership.tenant, job_id=job_id)
    state = selectors.job_state(tenant=membership.tenant, job_id=job.pk)
    context = {"job": job, "state": state, "membership": membership}
    if job.kind == JobKind.FL:
        context["rounds"] = selectors.fl_round_list(tenant=membership.tenant, job=job)[:100]
        context["model_versions"] = selectors.model_version_list(
            tenant=membership.tenant, job=job
        ).select_related("round")[:100]
        context["privacy"] = fl_privacy_state(job=job)
        context["secagg"] = fl_secagg_plan(job=job)
    return render(request, "jobs/job_detail.html", context)


@login_required
@require_GET
def model_version_download(request: HttpRequest, model_version_id: uuid.UUID) -> HttpResponse:
    """Download a global model version (raw float32) of one of the tenant's FL jobs."""
    membership = active_membership_or_404(request)
    version = selectors.model_version_get(
        tenant=membership.tenant, model_version_id=model_version_id
    )
    return model_version_response(request, version, filename=model_version_filename(version))


@login_required
@require_GET
def model_version_onnx(request: HttpRequest, model_version_id: uuid.UUID) -> HttpResponse:
    """Download a global model version as ONNX (logistic regression, MLP or CNN)."""
    membership = active_membership_or_404(request)
    version = selectors.model_version_get(
        tenant=membership.tenant, model_version_id=model_version_id
    )
    return onnx_response(version)


@require_GET
def model_weights(request: HttpRequest, sha256: str) -> HttpResponse:
    """A running FL job's global model by hash, for workers (``Authorization: Worker <token>``);
    409 ``round_closed`` once its job stopped running.

    Same origin as the worker page (its CSP allows no other), cached by hash. The response holds
    the weights only: no job, tenant or round is named in it.
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Worker" or dispatch.worker_token_verify(token=token.strip()) is None:
        return JsonResponse(
            {"error": {"code": "unauthorized", "message": "worker token required"}}, status=401
        )
    version = selectors.model_version_get_for_workers_unscoped(sha256=sha256)
    if version is None:
        if selectors.model_version_of_stopped_job_exists_unscoped(sha256=sha256):
            return round_closed()  # a pause or an end closed the round during the fetch
        raise Http404("No such model")
    response = model_version_response(request, version)
    del response["X-Content-SHA256"]  # the URL already names the hash
    return response


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
    if job.kind == JobKind.FL:
        raise Http404("A federated learning job's results are its model versions.")
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
