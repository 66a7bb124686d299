"""Job lifecycle: create (split into tasks), start, pause, resume, cancel, reduce."""

from __future__ import annotations

import hashlib
import math
import random
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ccgsc_worker import abi
from ccgsc_worker.kernel import KernelRunner
from jobs import realtime
from jobs.kernels import kernel_module_bytes
from jobs.metering import WorkQuote, WorkRefused, metering
from jobs.models import (
    ACTIVE_JOB_STATUSES,
    Assignment,
    AssignmentStatus,
    Job,
    JobEvent,
    JobStatus,
    Kernel,
    Reducer,
    Task,
    TaskStatus,
)
from tenants.models import Tenant, User
from tenants.roles import Action
from tenants.services import require_role
from tenants.tiers import JobKind

MAX_SEED = (1 << 63) - 1
MAX_INDEX = (1 << 63) - 1
KNOWN_ANSWER_EVERY = 50
MAX_KNOWN_ANSWERS = 20
TASK_BATCH = 2000


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a tenant asks for; validated by ``job_create``."""

    name: str
    kernel: Kernel
    range_start: int
    range_end: int
    chunk_size: int
    params: dict[str, float] | list[float]
    seed: int | None = None
    quorum: int = 2
    max_replicas: int | None = None
    lease_seconds: int = 60
    priority: int = 0
    deadline: datetime | None = None
    adaptive_replication: bool = False
    private_pool: bool = False


def job_event(*, job: Job, kind: str, message: str) -> JobEvent:
    """Record a line of the job's history and push it to the director after commit."""
    event = JobEvent.objects.create(
        tenant_id=job.tenant_id, job=job, kind=kind, message=message[:300]
    )
    realtime.broadcast_on_commit(
        realtime.job_group(job.id),
        {
            "type": "job.event",
            "kind": kind,
            "message": event.message,
            "at": event.created_at.isoformat(),
        },
    )
    return event


def _params_vector(kernel: Kernel, params: dict[str, Any] | list[Any]) -> list[float]:
    """Order and check a job's parameters against the kernel's declared schema."""
    schema = kernel.params_schema or []
    if not schema:
        values = [] if params in ({}, None) else params
        values = values if isinstance(values, list) else None
        if values is None or len(values) > abi.MAX_PARAMS:
            raise ValidationError({"params": "Give a list of at most 4096 numbers."})
        checked = values
    else:
        if not isinstance(params, dict):
            raise ValidationError({"params": f"Give an object with {[p['name'] for p in schema]}."})
        unknown = set(params) - {p["name"] for p in schema}
        if unknown:
            raise ValidationError({"params": f"Unknown parameters {sorted(unknown)}."})
        checked = []
        for spec in schema:
            if spec["name"] not in params:
                raise ValidationError({"params": f"Missing parameter {spec['name']!r}."})
            value = params[spec["name"]]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValidationError({"params": f"{spec['name']} must be a number."})
            if spec.get("type") == "integer" and float(value) != int(value):
                raise ValidationError({"params": f"{spec['name']} must be an integer."})
            if "minimum" in spec and value < spec["minimum"]:
                raise ValidationError({"params": f"{spec['name']} must be ≥ {spec['minimum']}."})
            if "maximum" in spec and value > spec["maximum"]:
                raise ValidationError({"params": f"{spec['name']} must be ≤ {spec['maximum']}."})
            checked.append(value)
    vector = [float(v) for v in checked]
    if not all(math.isfinite(v) for v in vector):
        raise ValidationError({"params": "Parameters must be finite numbers."})
    return vector


def _index_limit(kernel: Kernel, params: list[float]) -> int:
    """The largest range_end a kernel accepts with these parameters."""
    names = [p["name"] for p in kernel.params_schema or []]
    if "nx" in names and "ny" in names:
        return int(params[names.index("nx")]) * int(params[names.index("ny")])
    return MAX_INDEX


def _reducer_k(job: Job) -> int | None:
    names = [p["name"] for p in job.kernel.params_schema or []]
    if job.kernel.reducer == Reducer.BEST_K and "k" in names:
        return int(job.params[names.index("k")])
    return None


@transaction.atomic
def job_create(
    *, tenant: Tenant, actor: User | None, actor_role: str, spec: JobSpec, start: bool = True
) -> Job:
    """Validate a job against the tenant's tier and the kernel, split it into tasks, start it."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    if not tenant.is_active:
        raise PermissionDenied("This tenant is suspended.")
    policy = tenant.policy
    if not policy.allows_job_kind(JobKind.FC):
        raise PermissionDenied(f"{policy.label} does not include federated computing jobs.")
    kernel = spec.kernel
    if kernel.tenant_id not in (None, tenant.pk):
        raise ValidationError({"kernel": "Unknown kernel."})
    errors: dict[str, str] = {}
    name = spec.name.strip()
    if not name:
        errors["name"] = "Give the job a name."
    if not 1 <= spec.quorum <= policy.max_quorum:
        errors["quorum"] = f"Quorum must be between 1 and {policy.max_quorum} on {policy.label}."
    # With 20 % of workers wrong at random, quorum + 3 let one unlucky task fail a whole job
    # (bench_validation); five times the quorum keeps that negligible.
    max_replicas = spec.max_replicas or min(20, spec.quorum * 5)
    if not spec.quorum <= max_replicas <= 20:
        errors["max_replicas"] = "max_replicas must be at least the quorum and at most 20."
    if not 0 <= spec.range_start < spec.range_end <= MAX_INDEX:
        errors["range_end"] = "Need 0 ≤ range_start < range_end < 2^63."
    if not 1 <= spec.chunk_size <= kernel.max_range_per_task:
        errors["chunk_size"] = f"chunk_size must be between 1 and {kernel.max_range_per_task}."
    if not 5 <= spec.lease_seconds <= 3600:
        errors["lease_seconds"] = "lease_seconds must be between 5 and 3600."
    if not -100 <= spec.priority <= 100:
        errors["priority"] = "priority must be between -100 and 100."
    if spec.private_pool and not policy.private_worker_pools:
        errors["private_pool"] = (
            f"Private worker pools are part of FL Enterprise, not {policy.label}."
        )
    if spec.deadline is not None and spec.deadline <= timezone.now():
        errors["deadline"] = "The deadline is in the past."
    seed = secrets.randbelow(MAX_SEED) if spec.seed is None else spec.seed
    if not 0 <= seed <= MAX_SEED:
        errors["seed"] = "seed must be between 0 and 2^63-1."
    if errors:
        raise ValidationError(errors)
    params = _params_vector(kernel, spec.params)
    if spec.range_end > _index_limit(kernel, params):
        raise ValidationError(
            {"range_end": f"range_end exceeds the grid size {_index_limit(kernel, params)}."}
        )
    task_count = math.ceil((spec.range_end - spec.range_start) / spec.chunk_size)
    if task_count > policy.max_tasks_per_job:
        raise ValidationError(
            {
                "chunk_size": f"{task_count} tasks exceed {policy.max_tasks_per_job} on {policy.label}; use bigger chunks."
            }
        )
    running = Job.objects.for_tenant(tenant).filter(status__in=ACTIVE_JOB_STATUSES).count()
    if running >= policy.max_concurrent_jobs:
        raise ValidationError(
            {"name": f"{policy.label} runs at most {policy.max_concurrent_jobs} jobs at once."}
        )

    job = Job.objects.create(
        tenant=tenant,
        name=name[:120],
        kernel=kernel,
        params=params,
        range_start=spec.range_start,
        range_end=spec.range_end,
        chunk_size=spec.chunk_size,
        seed=seed,
        quorum=spec.quorum,
        max_replicas=max_replicas,
        adaptive_replication=spec.adaptive_replication,
        private_pool=spec.private_pool,
        lease_seconds=spec.lease_seconds,
        priority=spec.priority,
        deadline=spec.deadline,
        task_count=task_count,
        created_by=actor,
    )
    _tasks_create(job)
    job_event(
        job=job, kind="created", message=f"{task_count} tasks of {kernel.name}, quorum {job.quorum}"
    )
    if start:
        job = job_start(job=job, actor_role=actor_role)
    return job


def _tasks_create(job: Job) -> None:
    """Split the job's range into tasks, with known-answer tasks mixed in at random places."""
    scale = job.kernel.work_unit_scale
    real = []
    for index in range(job.task_count):
        lo = job.range_start + index * job.chunk_size
        hi = min(lo + job.chunk_size, job.range_end)
        real.append(
            Task(
                tenant_id=job.tenant_id,
                job=job,
                index=index,
                lo=lo,
                hi=hi,
                work_units=max(1, round((hi - lo) * scale)),
                target_replicas=job.quorum,
                priority=job.priority,
                private_pool=job.private_pool,
            )
        )
    rows = real + _known_answer_tasks(job, real)
    # Shuffle the known-answer tasks into the queue so a worker cannot tell them apart by order.
    if len(rows) > len(real):
        rng = random.Random(job.seed)  # noqa: S311 - placement, not secrecy
        rng.shuffle(rows)
    for start in range(0, len(rows), TASK_BATCH):
        Task.objects.bulk_create(rows[start : start + TASK_BATCH])


def _known_answer_tasks(job: Job, real: list[Task]) -> list[Task]:
    """Copies of real task ranges whose answers the server computes itself (built-ins only)."""
    count = min(MAX_KNOWN_ANSWERS, len(real) // KNOWN_ANSWER_EVERY)
    if not job.kernel.builtin or count == 0:
        return []
    runner = KernelRunner(kernel_module_bytes(job.kernel), job.kernel.sha256)
    rng = random.Random(job.seed ^ 0x5EED)  # noqa: S311 - which ranges to check, not secrecy
    tasks = []
    for offset, model in enumerate(rng.sample(real, count)):
        output = runner.run(abi.encode_input(model.lo, model.hi, job.seed, job.params))
        tasks.append(
            Task(
                tenant_id=job.tenant_id,
                job=job,
                index=len(real) + offset,
                lo=model.lo,
                hi=model.hi,
                work_units=model.work_units,
                target_replicas=1,
                priority=job.priority,
                private_pool=job.private_pool,
                known_answer_sha256=hashlib.sha256(output).hexdigest(),
            )
        )
    return tasks


def _lock(job: Job) -> Job:
    # ``job`` was loaded through a tenant-scoped selector; re-read it under a row lock.
    return Job.objects.unscoped().select_for_update().get(pk=job.pk, tenant_id=job.tenant_id)


def _ensure_affordable(job: Job) -> None:
    """Prepaid tenants must be able to pay for the next task before work is handed out."""
    units = max(
        1, round(min(job.chunk_size, job.range_end - job.range_start) * job.kernel.work_unit_scale)
    )
    try:
        metering().admit(tenant=job.tenant, quote=WorkQuote(work_units=units))
    except WorkRefused as exc:
        raise ValidationError(str(exc)) from exc


def _set_dispatchable(job: Job) -> None:
    """Recompute which of the job's open tasks may be handed out."""
    tasks = Task.objects.unscoped().filter(job=job)
    if job.status == JobStatus.RUNNING:
        tasks.filter(status=TaskStatus.OPEN, active_replicas__lt=F("target_replicas")).update(
            dispatchable=True
        )
    else:
        tasks.filter(dispatchable=True).update(dispatchable=False)


@transaction.atomic
def job_start(*, job: Job, actor_role: str) -> Job:
    """Start a draft job: its tasks become dispatchable and idle workers are woken."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    job = _lock(job)
    if job.status != JobStatus.DRAFT:
        raise ValidationError(f"A {job.status} job cannot be started.")
    _ensure_affordable(job)
    job.status = JobStatus.RUNNING
    job.started_at = timezone.now()
    job.save(update_fields=["status", "started_at"])
    _set_dispatchable(job)
    job_event(job=job, kind="started", message="Job started")
    realtime.wake_dispatch_on_commit()
    return job


@transaction.atomic
def job_pause(*, job: Job, actor_role: str, reason: str = "Paused by the tenant") -> Job:
    """Stop handing out tasks; replicas already running may still report."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    job = _lock(job)
    if job.status != JobStatus.RUNNING:
        raise ValidationError(f"A {job.status} job cannot be paused.")
    job.status = JobStatus.PAUSED
    job.status_reason = reason[:300]
    job.save(update_fields=["status", "status_reason"])
    _set_dispatchable(job)
    job_event(job=job, kind="paused", message=reason)
    return job


def job_pause_system(*, job_id: Any, reason: str) -> bool:
    """Pause a running job on the platform's own behalf (e.g. the money plane when a balance runs
    out). No role is involved: this is a system action, audited as a job event. Returns whether
    the job was running and is now paused. Call it after the caller's transaction commits: it
    takes the job's row lock in a transaction of its own."""
    with transaction.atomic():
        job = Job.objects.unscoped().select_for_update().filter(pk=job_id).first()
        if job is None or job.status != JobStatus.RUNNING:
            return False
        job.status = JobStatus.PAUSED
        job.status_reason = reason[:300]
        job.save(update_fields=["status", "status_reason"])
        _set_dispatchable(job)
        job_event(job=job, kind="paused", message=reason)
        return True


@transaction.atomic
def job_resume(*, job: Job, actor_role: str) -> Job:
    """Resume a paused job."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    job = _lock(job)
    if job.status != JobStatus.PAUSED:
        raise ValidationError(f"A {job.status} job cannot be resumed.")
    _ensure_affordable(job)
    job.status = JobStatus.RUNNING
    job.status_reason = ""
    job.save(update_fields=["status", "status_reason"])
    _set_dispatchable(job)
    job_event(job=job, kind="resumed", message="Job resumed")
    realtime.wake_dispatch_on_commit()
    return job


@transaction.atomic
def job_cancel(*, job: Job, actor_role: str, reason: str = "Cancelled by the tenant") -> Job:
    """Cancel a job: open tasks are cancelled and running replicas told to stop."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    job = _lock(job)
    if job.is_finished:
        raise ValidationError(f"A {job.status} job cannot be cancelled.")
    job.status = JobStatus.CANCELLED
    job.status_reason = reason[:300]
    job.completed_at = timezone.now()
    job.save(update_fields=["status", "status_reason", "completed_at"])
    Task.objects.unscoped().filter(job=job, status=TaskStatus.OPEN).update(
        status=TaskStatus.CANCELLED, dispatchable=False
    )
    _cancel_running_replicas(job, reason="job_cancelled")
    job_event(job=job, kind="cancelled", message=reason)
    return job


def _cancel_running_replicas(job: Job, *, reason: str, task: Task | None = None) -> None:
    """Mark live replicas cancelled and tell their workers (after commit)."""
    live = Assignment.objects.unscoped().filter(job=job, status=AssignmentStatus.ASSIGNED)
    if task is not None:
        live = live.filter(task=task)
    for assignment_id, channel in live.values_list("id", "worker__channel_name"):
        realtime.send_on_commit(
            channel, {"type": "worker.cancel", "assignment": str(assignment_id), "reason": reason}
        )
    live.update(status=AssignmentStatus.CANCELLED)


def job_finish_if_done(job_id: Any) -> bool:
    """Under the job's row lock: if every real task is validated, move to reducing once.

    Returns True when this call made the transition (and so queued the reduction).
    """
    job = Job.objects.unscoped().select_for_update().get(pk=job_id)
    if (
        job.status not in (JobStatus.RUNNING, JobStatus.PAUSED)
        or job.tasks_validated < job.task_count
    ):
        return False
    job.status = JobStatus.REDUCING
    job.save(update_fields=["status"])
    Task.objects.unscoped().filter(job=job, status=TaskStatus.OPEN).update(
        status=TaskStatus.CANCELLED, dispatchable=False
    )
    _cancel_running_replicas(job, reason="job_complete")
    job_event(job=job, kind="reducing", message="All tasks validated; reducing results")
    from jobs.tasks import job_reduce

    transaction.on_commit(lambda: job_reduce.delay(str(job.pk)))
    return True


@transaction.atomic
def job_reduce(*, job_id: Any) -> Job:
    """Reduce the canonical results of a job's tasks, in task order. Idempotent."""
    job = Job.objects.unscoped().select_for_update().select_related("kernel").get(pk=job_id)
    if job.status != JobStatus.REDUCING:
        return job
    outputs = list(
        Task.objects.unscoped()
        .filter(job=job, known_answer_sha256="", status=TaskStatus.VALIDATED)
        .order_by("index")
        .values_list("canonical_output", flat=True)
    )
    if len(outputs) != job.task_count:
        raise RuntimeError(
            f"job {job.pk}: {len(outputs)} canonical results for {job.task_count} tasks"
        )
    k = _reducer_k(job)
    try:
        reduced = abi.reduce_outputs(job.kernel.reducer, [bytes(o) for o in outputs], k=k)
    except (abi.OutputError, ValueError) as exc:
        # Canonical results that cannot be combined mean agreeing workers were wrong together.
        job.status = JobStatus.FAILED
        job.status_reason = f"results could not be reduced: {exc}"[:300]
        job.completed_at = timezone.now()
        job.save(update_fields=["status", "status_reason", "completed_at"])
        job_event(job=job, kind="failed", message=job.status_reason)
        return job
    job.result_bytes = reduced
    job.result_sha256 = hashlib.sha256(reduced).hexdigest()
    job.result = result_summary(job=job, reduced=reduced)
    job.status = JobStatus.COMPLETED
    job.completed_at = timezone.now()
    job.save(update_fields=["result_bytes", "result_sha256", "result", "status", "completed_at"])
    job_event(job=job, kind="completed", message="Job completed")
    return job


def result_summary(*, job: Job, reduced: bytes) -> dict[str, Any]:
    """The JSON result of a job: the reduced output decoded, plus what it means per kernel."""
    value = abi.output_to_json(job.kernel.reducer, reduced, k=_reducer_k(job))
    summary: dict[str, Any] = {"reducer": job.kernel.reducer, "value": value}
    if job.kernel.name == "prime_count":
        summary["primes"] = value[0]
    elif job.kernel.name == "montecarlo_pi":
        inside, samples = value
        summary["inside"], summary["samples"] = inside, samples
        summary["pi_estimate"] = 4 * inside / samples if samples else None
    elif job.kernel.name == "param_sweep":
        names = [p["name"] for p in job.kernel.params_schema]
        p = dict(zip(names, job.params, strict=True))
        nx, ny = int(p["nx"]), int(p["ny"])
        points = []
        for record in value:
            ix, iy = record["index"] % nx, record["index"] // nx
            points.append(
                {
                    "index": record["index"],
                    "x": p["x0"] + (p["x1"] - p["x0"]) * ix / (nx - 1),
                    "y": p["y0"] + (p["y1"] - p["y0"]) * iy / (ny - 1),
                    "value": record["value"],
                }
            )
        summary["best"] = points
    return summary


def job_control(*, tenant: Tenant, job_id: Any, role: str, action: str) -> Job:
    """Apply a director or API control (start, pause, resume, cancel) to a tenant's job."""
    from jobs.selectors import job_get

    job = job_get(tenant=tenant, job_id=job_id)  # first: another tenant's job is a 404, always
    controls = {"start": job_start, "pause": job_pause, "resume": job_resume, "cancel": job_cancel}
    if action not in controls:
        raise ValidationError(f"Unknown action {action!r}; use one of {sorted(controls)}.")
    return controls[action](job=job, actor_role=role)
