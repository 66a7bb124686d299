"""Reads of jobs, tasks, kernels and workers. Every tenant read takes the tenant first."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Count, Max, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from jobs.counter_models import COUNTER_FIELDS, JobCounterDelta, JobCounters
from jobs.fl_models import RoundStatus
from jobs.models import (
    Assignment,
    AssignmentStatus,
    Job,
    JobEvent,
    JobStatus,
    Kernel,
    ModelVersion,
    Round,
    Task,
)
from tenants.models import Tenant
from tenants.selectors import membership_list_for_user
from tenants.tiers import JobKind

# The director charts the last FL_CURVE_ROUNDS closed rounds: with every series at full width
# the state message stays well under the text-frame limit (tests/jobs/test_fl_curves.py).
FL_CURVE_ROUNDS = 100
# Per-round series of the director's FL section, each aligned with ``round`` (null = not
# measured in that round: evaluation before server-side evaluation lands, staleness in sync mode).
FL_METRIC_SERIES = (
    "train_loss",
    "train_accuracy",
    "eval_loss",
    "eval_accuracy",
    "client_accuracy_std",
    "staleness_mean",
    "duration_seconds",
)
FL_ROUND_SERIES = ("participants", "dropouts", "stragglers", "rejected", "bytes_up", "bytes_down")
# Round series kept in the round's metrics rather than in a column of their own.
_FL_METRIC_COUNTS = frozenset({"participants", "rejected"})


def job_list(*, tenant: Tenant) -> QuerySet[Job]:
    """A tenant's jobs, newest first."""
    return (
        Job.objects.for_tenant(tenant).select_related("kernel", "fl_config").order_by("-created_at")
    )


def job_get(*, tenant: Tenant, job_id: uuid.UUID | str) -> Job:
    """One job of ``tenant``; Http404 otherwise."""
    try:
        return job_list(tenant=tenant).get(pk=job_id)
    except (Job.DoesNotExist, ValueError, TypeError) as exc:
        raise Http404("No such job") from exc


@dataclass(frozen=True, slots=True)
class JobAccess:
    tenant: Tenant
    job_id: uuid.UUID
    role: str


def job_access_for_user(*, user: Any, job_id: uuid.UUID | str) -> JobAccess | None:
    """The user's role on a job's tenant, or None when they are not a member of it."""
    job = Job.objects.unscoped().filter(pk=job_id).values("tenant_id").first()
    if job is None:
        return None
    membership = membership_list_for_user(user=user).filter(tenant_id=job["tenant_id"]).first()
    if membership is None:
        return None
    return JobAccess(tenant=membership.tenant, job_id=uuid.UUID(str(job_id)), role=membership.role)


def task_list(*, tenant: Tenant, job: Job) -> QuerySet[Task]:
    """A job's real tasks (known-answer checks are the platform's, not the tenant's)."""
    return Task.objects.for_tenant(tenant).filter(job=job, known_answer_sha256="").order_by("index")


def kernel_list(*, tenant: Tenant) -> QuerySet[Kernel]:
    """Built-in kernels and the tenant's own."""
    return Kernel.objects.filter(Q(tenant__isnull=True) | Q(tenant=tenant)).order_by(
        "name", "-created_at"
    )


def kernel_get(*, tenant: Tenant, kernel_id: uuid.UUID | str) -> Kernel:
    """A kernel the tenant may use; Http404 otherwise."""
    try:
        return kernel_list(tenant=tenant).get(pk=kernel_id)
    except (Kernel.DoesNotExist, ValueError, TypeError) as exc:
        raise Http404("No such kernel") from exc


def kernel_get_by_sha256_unscoped(*, sha256: str) -> Kernel | None:
    """A kernel by module hash, for workers (who run every tenant's kernels)."""
    # Several tenants may hold the same module: the bytes are identical for a hash, any row does.
    return Kernel.objects.filter(sha256=sha256).order_by("-builtin", "created_at").first()


def job_counters(*, tenant: Tenant, job: Job) -> dict[str, int]:
    """How many of the job's tasks and replicas are in each status: its counters row plus the
    deltas not folded into it yet, read in one statement (so a concurrent fold cannot make a
    delta count twice or not at all). Zeros for a job without tasks."""
    names = ", ".join(COUNTER_FIELDS)
    sums = ", ".join(f"COALESCE(sum({name}), 0)" for name in COUNTER_FIELDS)
    key = [
        Job._meta.pk.get_db_prep_value(job.pk, connection),
        Tenant._meta.pk.get_db_prep_value(tenant.pk, connection),
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {sums} FROM ("  # noqa: S608 - table and column names only
            f"SELECT {names} FROM {JobCounters._meta.db_table} WHERE job_id = %s AND tenant_id = %s"
            f" UNION ALL SELECT {names} FROM {JobCounterDelta._meta.db_table}"
            " WHERE job_id = %s AND tenant_id = %s) AS c",
            key + key,
        )
        row = cursor.fetchone()
    return dict(zip(COUNTER_FIELDS, (int(value) for value in row), strict=True))


def job_throughput(*, job: Job, validated: int) -> float:
    """Validated tasks per second since the job started (0 unless it runs): read from counters,
    not from a count of recently validated tasks."""
    if job.status != JobStatus.RUNNING or job.started_at is None:
        return 0.0
    seconds = (timezone.now() - job.started_at).total_seconds()
    return validated / seconds if seconds > 0 else 0.0


def job_state(*, tenant: Tenant, job_id: uuid.UUID) -> dict[str, Any]:
    """The director's snapshot: status, counts, throughput, ETA, workers, recent events.

    The counts come from the job's counters row (kept by the database in every transaction that
    changes a task or replica), so a snapshot costs a few indexed reads, whatever the job's size.
    """
    job = job_get(tenant=tenant, job_id=job_id)
    counters = job_counters(tenant=tenant, job=job)
    counts = {
        "open": counters["tasks_open"],
        "queued": counters["tasks_queued"],
        "validated": counters["tasks_validated"],
        "failed": counters["tasks_failed"],
    }
    replica_counts = {
        "running": counters["replicas_running"],
        "valid": counters["replicas_valid"],
        "invalid": counters["replicas_invalid"],
        "errors": counters["replicas_error"],
        "expired": counters["replicas_expired"],
    }
    throughput = job_throughput(job=job, validated=counters["tasks_validated"])
    remaining = job.task_count - job.tasks_validated
    eta_s = round(remaining / throughput) if throughput > 0 and remaining > 0 else None
    # The workers holding the job's live replicas (the (job, status) index; no recent history).
    workers = (
        Assignment.objects.for_tenant(tenant)
        .filter(job=job, status=AssignmentStatus.ASSIGNED)
        .values(
            "worker_id",
            "worker__kind",
            "worker__capabilities",
            "worker__consecutive_valid",
            "worker__is_online",
        )
        .annotate(replicas=Count("id"))
        .order_by("-replicas", "worker_id")[:50]
    )
    events = JobEvent.objects.for_tenant(tenant).filter(job=job).order_by("-created_at", "-id")[:15]
    return {
        "job": str(job.pk),
        "name": job.name,
        "status": job.status,
        "status_reason": job.status_reason,
        "kernel": job.kernel.name if job.kernel_id else job.fl_config.model_kernel,
        "task_count": job.task_count,
        "tasks": counts,
        "replicas": replica_counts,
        "progress_percent": job.progress_percent,
        "throughput_tasks_per_s": round(throughput, 3),
        "eta_s": eta_s,
        "result": job.result,
        "workers": [
            {
                "id": str(w["worker_id"])[:8],
                "kind": w["worker__kind"],
                "cores": (w["worker__capabilities"] or {}).get("cores"),
                "simd": (w["worker__capabilities"] or {}).get("simd"),
                "trust": w["worker__consecutive_valid"],
                "online": w["worker__is_online"],
                "replicas": w["replicas"],
            }
            for w in workers
        ],
        "events": [
            {"kind": e.kind, "message": e.message, "at": e.created_at.isoformat()} for e in events
        ],
    } | (
        {
            "fl": fl_curves(tenant=tenant, job=job),
            "privacy": fl_privacy_live(tenant=tenant, job=job),
        }
        if job.kind == JobKind.FL
        else {}
    )


def _significant(value: Any) -> float | None:
    """A metric rounded to 6 significant digits (the curves need no more; the frame stays small)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(f"{value:.6g}")


def fl_curves(*, tenant: Tenant, job: Job) -> dict[str, Any]:
    """The director's FL section: per closed round (the last FL_CURVE_ROUNDS), column-wise
    series aligned with ``round``, read from what ``round_close`` stored, one query of the
    rounds plus one aggregate."""
    rounds = Round.objects.for_tenant(tenant).filter(job=job)
    totals = rounds.aggregate(
        closed=Count("id", filter=Q(status=RoundStatus.CLOSED)),
        failed=Count("id", filter=Q(status=RoundStatus.FAILED)),
        current=Max("number", filter=Q(status=RoundStatus.OPEN)),
    )
    rows = list(
        rounds.filter(status=RoundStatus.CLOSED)
        .order_by("-number")
        .values("number", "dropouts", "stragglers", "bytes_up", "bytes_down", "metrics")[
            :FL_CURVE_ROUNDS
        ]
    )[::-1]
    curves: dict[str, Any] = {
        "rounds_closed": totals["closed"],
        "rounds_failed": totals["failed"],
        "round_open": totals["current"],
        "round": [row["number"] for row in rows],
    }
    for name in FL_METRIC_SERIES:
        curves[name] = [_significant((row["metrics"] or {}).get(name)) for row in rows]
    for name in FL_ROUND_SERIES:
        curves[name] = [
            (row["metrics"] or {}).get(name) if name in _FL_METRIC_COUNTS else row[name]
            for row in rows
        ]
    return curves


def fl_privacy_live(*, tenant: Tenant, job: Job) -> dict[str, Any] | None:
    """The director's privacy section: ε spent after the last closed round, the budget, the
    rounds it still allows and the current clip norm (None without DP). Reads what the round
    services recorded (one aggregate, one row): no accountant runs here."""
    config = job.fl_config
    if config is None or not config.differential_privacy:
        return None
    rounds = Round.objects.for_tenant(tenant).filter(job=job)
    totals = rounds.aggregate(
        spending=Count("id", filter=~Q(status=RoundStatus.FAILED)),
        spent=Max("epsilon_spent"),  # cumulative ε never decreases
    )
    clip_norm = (
        rounds.filter(clip_norm__isnull=False)
        .order_by("-number")
        .values_list("clip_norm", flat=True)
        .first()
    )
    allowed = config.dp_rounds_allowed or 0
    return {
        "epsilon_spent": _significant(totals["spent"] or 0.0),
        "epsilon_budget": config.dp_epsilon,
        "delta": config.dp_delta,
        "rounds_spending": totals["spending"],
        "rounds_allowed": allowed,
        "rounds_planned": config.rounds,
        "rounds_left": max(0, allowed - totals["spending"]),
        "clip_norm": _significant(clip_norm),
    }


def fl_round_list(*, tenant: Tenant, job: Job) -> QuerySet[Round]:
    """An FL job's rounds, newest first."""
    return Round.objects.for_tenant(tenant).filter(job=job).order_by("-number")


def model_version_list(*, tenant: Tenant, job: Job) -> QuerySet[ModelVersion]:
    """An FL job's global model versions, newest first."""
    return ModelVersion.objects.for_tenant(tenant).filter(job=job).order_by("-version")


def model_version_get(*, tenant: Tenant, model_version_id: uuid.UUID | str) -> ModelVersion:
    """One model version of ``tenant``; Http404 otherwise."""
    try:
        return (
            ModelVersion.objects.for_tenant(tenant).select_related("job").get(pk=model_version_id)
        )
    except (ModelVersion.DoesNotExist, ValueError, TypeError) as exc:
        raise Http404("No such model version") from exc


def model_version_get_for_workers_unscoped(*, sha256: str) -> ModelVersion | None:
    """A global model by hash, for workers of any tenant, only while its job is running."""
    return (
        ModelVersion.objects.unscoped()
        .filter(sha256=sha256, job__status=JobStatus.RUNNING)
        .order_by("created_at")
        .first()
    )


def model_version_of_stopped_job_exists_unscoped(*, sha256: str) -> bool:
    """Whether a global model with this hash exists whose job ran and no longer runs (paused,
    reducing or ended): a worker fetching it is late for a round that closed, not asking for
    something unknown. A draft's initial weights are not: no worker was ever sent their hash."""
    return (
        ModelVersion.objects.unscoped()
        .filter(sha256=sha256)
        .exclude(job__status__in=(JobStatus.RUNNING, JobStatus.DRAFT))
        .exists()
    )


def fl_local_data_jobs_unscoped(*, pool_tenant_id: Any = None) -> list[dict[str, Any]]:
    """Running or paused FL and analytics jobs that read contributors' own data, across tenants,
    with the schema a contributor's file must match: the worker page lists them so a contributor
    can pick and consent to data before an invite arrives. Private-pool jobs only for their pool.
    An analytics job's schema is ``{"format": "columns", "columns": [names]}`` (the query's
    column names, in order) and its ``max_samples`` is the query's ``max_rows``."""
    pool = Q(private_pool=False)
    if pool_tenant_id is not None:
        pool |= Q(tenant_id=pool_tenant_id)
    jobs = (
        Job.objects.unscoped()
        .filter(
            pool,
            kind__in=(JobKind.FL, JobKind.ANALYTICS),
            status__in=(JobStatus.RUNNING, JobStatus.PAUSED),
            fl_config__data_source="contributor_local",
        )
        .select_related("fl_config", "tenant", "analytics_query")
        .order_by("-created_at")[:50]
    )
    listed = []
    for job in jobs:
        if job.kind == JobKind.ANALYTICS:
            query = job.analytics_query
            schema = {"format": "columns", "columns": [c["name"] for c in query.columns]}
            max_samples = query.max_rows
        else:
            schema, max_samples = dict(job.fl_config.local_data), job.fl_config.max_local_samples
        listed.append(
            {
                "job": str(job.pk),
                "name": job.name,
                "organisation": job.tenant.name,
                "kind": job.kind,
                "schema": schema,
                "max_samples": max_samples,
            }
        )
    return listed
