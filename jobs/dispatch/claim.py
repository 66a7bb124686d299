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

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from jobs.dispatch.queue_fill import queue_fill_request
from jobs.models import (
    COUNTED_REPLICA_STATUSES,
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

    @classmethod
    def for_assignment(cls, assignment: Assignment, task: Task, job: Job) -> Offer:
        """The offer of a new replica (``job`` loaded with its kernel)."""
        return cls(
            assignment_id=assignment.id,
            job_id=job.pk,
            task_index=task.index,
            kernel_name=job.kernel.name,
            kernel_version=job.kernel.version,
            kernel_sha256=job.kernel.sha256,
            lo=task.lo,
            hi=task.hi,
            seed=job.seed,
            params=job.params,
            lease_ms=job.lease_seconds * 1000,
            work_units=task.work_units,
        )


def _trusted_alone(worker: Worker, rng: random.Random) -> bool:
    """Adaptive replication: may this worker's single result be accepted for a task?"""
    if worker.consecutive_valid < TRUST_THRESHOLD:
        return False
    spot_check = max(
        SPOT_CHECK_FLOOR, TRUST_THRESHOLD / (worker.consecutive_valid + TRUST_THRESHOLD)
    )
    return rng.random() >= spot_check


# The task columns a claim reads (the per-item claim and the batched one alike).
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


def running_jobs_of(tasks: list[Task]) -> dict[uuid.UUID, Job]:
    """The running jobs of ``tasks``, with their kernels (a paused or cancelled job is absent)."""
    return {
        job.pk: job
        for job in Job.objects.unscoped()
        .select_related("kernel")
        .filter(pk__in={t.job_id for t in tasks}, status=JobStatus.RUNNING)
    }


def replica_take(
    *, task: Task, job: Job, worker: Worker, rng: random.Random, now: datetime
) -> Assignment:
    """One more replica of ``task`` for ``worker`` (unsaved), counted on the task in memory;
    adaptive replication may let a trusted worker's replica stand alone. Caller holds the
    task's row lock and writes the task and the assignment."""
    task.active_replicas += 1
    if (
        job.adaptive_replication
        and not task.known_answer_sha256
        and task.active_replicas == 1
        and _trusted_alone(worker, rng)
    ):
        task.target_replicas = 1
    return Assignment(
        tenant_id=task.tenant_id,
        job_id=job.pk,
        task_id=task.pk,
        worker_id=worker.pk,
        contributor_id=worker.contributor_id,
        lease_expires_at=now + timedelta(seconds=job.lease_seconds),
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
    tasks = list(
        candidates.order_by("-priority", "id")
        .select_for_update(skip_locked=True, of=("self",))
        .only(*CLAIM_FIELDS)[:count]
    )
    if not tasks:
        return []
    jobs = running_jobs_of(tasks)
    now = timezone.now()
    rng = random.Random()  # noqa: S311 - spot-check sampling, not secrecy
    offers, assignments = [], []
    for task in tasks:
        job = jobs.get(task.job_id)
        if job is None:  # paused or cancelled between the flag and the lock
            Task.objects.unscoped().filter(pk=task.pk).update(dispatchable=False)
            continue
        assignment = replica_take(task=task, job=job, worker=worker, rng=rng, now=now)
        Task.objects.unscoped().filter(pk=task.pk).update(
            active_replicas=task.active_replicas,
            target_replicas=task.target_replicas,
            dispatchable=task.active_replicas < task.target_replicas,
        )
        assignments.append(assignment)
        offers.append(Offer.for_assignment(assignment, task, job))
    Assignment.objects.bulk_create(assignments)
    queue_fill_request(marks=[(t.pk, t.job_id) for t in tasks if t.queue_low_mark])
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
