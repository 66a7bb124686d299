"""Creating a job: the spec, its validation against the tier and the kernel, the split into
tasks and the known-answer tasks mixed in among them."""

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
from django.utils import timezone

from ccgsc_worker import abi
from ccgsc_worker.kernel import KernelRunner
from jobs.kernels import kernel_module_bytes
from jobs.manifest import index_limit
from jobs.models import ACTIVE_JOB_STATUSES, Job, Kernel, Task
from jobs.services.lifecycle import job_event, job_start
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
    """The largest range_end a kernel accepts with these parameters (its manifest's range)."""
    return index_limit(kernel.index_range or {}, kernel.params_by_name(params), MAX_INDEX)


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
