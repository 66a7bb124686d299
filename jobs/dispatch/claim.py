"""Claiming tasks and holding their leases.

A worker with free slots takes dispatchable tasks in one transaction (``SELECT ... FOR UPDATE
SKIP LOCKED`` on the partial index of dispatchable tasks), never a task its contributor already
holds a counted replica of; heartbeats extend the lease.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from jobs.dispatch.queue_fill import queue_fill_request
from jobs.dispatch.sql import bound_cursor, uuid_array
from jobs.models import (
    COUNTED_REPLICA_STATUSES,
    DISPATCH_ORDER,
    Assignment,
    AssignmentStatus,
    Job,
    JobStatus,
    Task,
    Worker,
)

HEARTBEAT_MS = 10_000
# Adaptive replication: a worker with this many consecutive validated results may be trusted
# alone, except for a spot-check whose probability never falls below the floor.
TRUST_THRESHOLD = 10
SPOT_CHECK_FLOOR = 0.1


@dataclass(frozen=True, slots=True)
class Offer:
    """Everything the consumer needs to send one ``assign`` message."""

    assignment_id: uuid.UUID
    job_id: uuid.UUID
    task_index: int
    kernel_name: str
    kernel_version: str
    kernel_sha256: str
    lo: int
    hi: int
    seed: int
    params: list[float]
    lease_ms: int
    work_units: int


@dataclass(slots=True)
class ClaimTask:
    """A locked task as a claim reads it (a row, not a model instance: building 768 instances
    was a third of a claim flush's CPU), its replica counts updated in memory."""

    id: int
    tenant_id: uuid.UUID
    job_id: uuid.UUID
    index: int
    lo: int
    hi: int
    work_units: int
    target_replicas: int
    active_replicas: int
    known_answer_sha256: str
    queue_low_mark: bool


@dataclass(frozen=True, slots=True)
class ClaimJob:
    """What a claim needs of a running job: its replication and lease rules and the constant
    fields of its offers."""

    id: uuid.UUID
    adaptive_replication: bool
    lease_seconds: int
    seed: int
    params: list[float]
    kernel_name: str
    kernel_version: str
    kernel_sha256: str


@dataclass(frozen=True, slots=True)
class ClaimWorker:
    """What a claim needs of a worker."""

    id: uuid.UUID
    contributor_id: uuid.UUID
    consecutive_valid: int


# A new replica as the unnest INSERT writes it: (id, tenant, job, task, worker, contributor,
# lease expiry).
AssignmentRow = tuple[uuid.UUID, uuid.UUID, uuid.UUID, int, uuid.UUID, uuid.UUID, datetime]


def _trusted_alone(consecutive_valid: int, rng: random.Random) -> bool:
    """Adaptive replication: may a worker's single result be accepted for a task?"""
    if consecutive_valid < TRUST_THRESHOLD:
        return False
    spot_check = max(SPOT_CHECK_FLOOR, TRUST_THRESHOLD / (consecutive_valid + TRUST_THRESHOLD))
    return rng.random() >= spot_check


# The task columns a claim reads (the per-item claim and the batched one alike), in
# ``ClaimTask``'s order.
CLAIM_FIELDS = (
    "id",
    "tenant_id",
    "job_id",
    "index",
    "lo",
    "hi",
    "work_units",
    "target_replicas",
    "active_replicas",
    "known_answer_sha256",
    "queue_low_mark",
)

_JOB_FIELDS = (
    "id",
    "adaptive_replication",
    "lease_seconds",
    "seed",
    "params",
    "kernel__name",
    "kernel__version",
    "kernel__sha256",
)


def running_jobs_of(tasks: list[ClaimTask]) -> dict[uuid.UUID, ClaimJob]:
    """The running jobs of ``tasks`` (a paused or cancelled job is absent)."""
    return {
        row[0]: ClaimJob(*row)
        for row in Job.objects.unscoped()
        .filter(pk__in={t.job_id for t in tasks}, status=JobStatus.RUNNING)
        .values_list(*_JOB_FIELDS)
    }


def replica_take(
    *, task: ClaimTask, job: ClaimJob, worker: ClaimWorker, rng: random.Random, now: datetime
) -> AssignmentRow:
    """One more replica of ``task`` for ``worker`` (not yet written), counted on the task in
    memory; adaptive replication may let a trusted worker's replica stand alone. Caller holds
    the task's row lock and writes the task and the assignment (``assignments_insert``)."""
    task.active_replicas += 1
    if (
        job.adaptive_replication
        and not task.known_answer_sha256
        and task.active_replicas == 1
        and _trusted_alone(worker.consecutive_valid, rng)
    ):
        task.target_replicas = 1
    return (
        uuid.uuid4(),
        task.tenant_id,
        job.id,
        task.id,
        worker.id,
        worker.contributor_id,
        now + timedelta(seconds=job.lease_seconds),
    )


def offer_of(assignment_id: uuid.UUID, task: ClaimTask, job: ClaimJob) -> Offer:
    """The offer of a new replica."""
    return Offer(
        assignment_id=assignment_id,
        job_id=job.id,
        task_index=task.index,
        kernel_name=job.kernel_name,
        kernel_version=job.kernel_version,
        kernel_sha256=job.kernel_sha256,
        lo=task.lo,
        hi=task.hi,
        seed=job.seed,
        params=job.params,
        lease_ms=job.lease_seconds * 1000,
        work_units=task.work_units,
    )


def assignments_insert(rows: list[AssignmentRow]) -> None:
    """Write new replicas (as ``replica_take`` builds them) with one ``INSERT … SELECT … FROM
    unnest(…)``: ``bulk_create`` built a placeholder per field and row (12,000 for a flush of
    768 claims), and building and parsing that statement was most of a claim flush's CPU.
    SQLite, which has no arrays, gets ``bulk_create``: it claims one worker at a time."""
    if not rows:
        return
    now = timezone.now()
    if connection.vendor != "postgresql":  # SQLite (the embedded default) has no arrays
        Assignment.objects.unscoped().bulk_create(
            [
                Assignment(
                    id=row[0],
                    tenant_id=row[1],
                    job_id=row[2],
                    task_id=row[3],
                    worker_id=row[4],
                    contributor_id=row[5],
                    lease_expires_at=row[6],
                    status=AssignmentStatus.ASSIGNED,
                    assigned_at=now,
                )
                for row in rows
            ]
        )
        return
    column = {f.name: f.column for f in Assignment._meta.concrete_fields}
    names = ("id", "tenant", "job", "task", "worker", "contributor", "lease_expires_at")
    blank = ("output_sha256", "error_code", "error_message")
    ids, tenants, jobs, tasks, workers, contributors, expiries = zip(*rows, strict=True)
    with bound_cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Assignment._meta.db_table} "  # noqa: S608 - names only
            f"({', '.join(column[name] for name in (*names, 'status', 'assigned_at', *blank))}) "
            f"SELECT v.*, %s, %s, {', '.join(["''"] * len(blank))} FROM unnest(%b::uuid[], "
            "%b::uuid[], %b::uuid[], %b::bigint[], %b::uuid[], %b::uuid[], %b::timestamptz[]) AS v",
            [
                AssignmentStatus.ASSIGNED,
                now,
                uuid_array(ids),
                uuid_array(tenants),
                uuid_array(jobs),
                list(tasks),
                uuid_array(workers),
                uuid_array(contributors),
                list(expiries),
            ],
        )


@transaction.atomic
def assignment_claim(*, worker_id: uuid.UUID, count: int) -> list[Offer]:
    """Atomically take up to ``count`` dispatchable tasks for a worker (SKIP LOCKED)."""
    if count <= 0:
        return []
    worker = Worker.objects.select_related("contributor").get(pk=worker_id)
    if worker.is_banned or worker.contributor.is_banned:
        return []
    contributor = worker.contributor
    already = Assignment.objects.unscoped().filter(
        task=OuterRef("pk"), contributor=contributor, status__in=COUNTED_REPLICA_STATUSES
    )
    candidates = Task.objects.unscoped().filter(dispatchable=True).filter(~Exists(already))
    if contributor.pool_tenant_id is not None:
        # A tenant's registered (private-pool) worker serves that tenant only.
        candidates = candidates.filter(tenant_id=contributor.pool_tenant_id)
    else:
        candidates = candidates.filter(private_pool=False)
    tasks = [
        ClaimTask(*row)
        for row in candidates.order_by(*DISPATCH_ORDER)
        .select_for_update(skip_locked=True, of=("self",))
        .values_list(*CLAIM_FIELDS)[:count]
    ]
    if not tasks:
        return []
    claimer = ClaimWorker(worker.pk, worker.contributor_id, worker.consecutive_valid)
    jobs = running_jobs_of(tasks)
    now = timezone.now()
    rng = random.Random()  # noqa: S311 - spot-check sampling, not secrecy
    offers, assignments = [], []
    for task in tasks:
        job = jobs.get(task.job_id)
        if job is None:  # paused or cancelled between the flag and the lock
            Task.objects.unscoped().filter(pk=task.id).update(dispatchable=False)
            continue
        assignment = replica_take(task=task, job=job, worker=claimer, rng=rng, now=now)
        Task.objects.unscoped().filter(pk=task.id).update(
            active_replicas=task.active_replicas,
            target_replicas=task.target_replicas,
            dispatchable=task.active_replicas < task.target_replicas,
        )
        assignments.append(assignment)
        offers.append(offer_of(assignment[0], task, job))
    assignments_insert(assignments)
    queue_fill_request(marks=[(t.id, t.job_id) for t in tasks if t.queue_low_mark])
    return offers


def assignment_heartbeat(*, worker_id: uuid.UUID, assignment_id: str) -> bool:
    """Extend a live lease held by this worker; False if it holds no such lease."""
    now = timezone.now()
    assignment = (
        Assignment.objects.unscoped()
        .filter(pk=assignment_id, worker_id=worker_id, status=AssignmentStatus.ASSIGNED)
        .select_related("job")
        .only("id", "job__lease_seconds")
        .first()
    )
    if assignment is None:
        return False
    Assignment.objects.unscoped().filter(pk=assignment.pk, status=AssignmentStatus.ASSIGNED).update(
        heartbeat_at=now, lease_expires_at=now + timedelta(seconds=assignment.job.lease_seconds)
    )
    return True
