"""The dispatch plane's services: worker identity, claiming tasks, heartbeats, results, leases.

Dispatch crosses tenants by design (a volunteer's browser serves every tenant's jobs), so the
queries here are explicitly ``unscoped()``. Invariants, all enforced under row locks:
- a task's ``active_replicas`` counts its replicas that hold a lease or returned a result;
  it is dispatchable while it is open, its job runs and ``active_replicas < target_replicas``;
- an assignment moves out of ``assigned`` exactly once (result, error, expiry or cancel), so a
  replica is counted, validated and credited once whatever is retried or replayed.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core import signing
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from jobs import realtime
from jobs.metering import metering
from jobs.models import (
    COUNTED_REPLICA_STATUSES,
    Assignment,
    AssignmentStatus,
    Contributor,
    Job,
    JobStatus,
    Task,
    TaskStatus,
    Worker,
)
from jobs.services import job_event, job_finish_if_done

TOKEN_SALT = "ccgsc.worker-token"  # noqa: S105 - a signing namespace, not a secret
HEARTBEAT_MS = 10_000
# Adaptive replication: a worker with this many consecutive validated results may be trusted
# alone, except for a spot-check whose probability never falls below the floor.
TRUST_THRESHOLD = 10
SPOT_CHECK_FLOOR = 0.1


# ---------------------------------------------------------------- contributors and tokens


def worker_token_issue(*, contributor: Contributor) -> str:
    """A signed worker token for ``contributor``; revoked by bumping its token_version."""
    return signing.dumps(
        {"c": str(contributor.pk), "v": contributor.token_version}, salt=TOKEN_SALT, compress=True
    )


def worker_token_verify(*, token: str) -> Contributor | None:
    """The contributor a token belongs to, or None if it is forged, revoked or banned."""
    try:
        payload = signing.loads(token, salt=TOKEN_SALT)
        contributor_id = uuid.UUID(payload["c"])
        version = int(payload["v"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None
    contributor = Contributor.objects.filter(pk=contributor_id).first()
    if contributor is None or contributor.is_banned or contributor.token_version != version:
        return None
    return contributor


@transaction.atomic
def contributor_create_anonymous() -> tuple[Contributor, str]:
    """A new anonymous device contributor and its token."""
    contributor = Contributor.objects.create()
    return contributor, worker_token_issue(contributor=contributor)


@transaction.atomic
def contributor_for_user(*, user: Any) -> Contributor:
    """The signed-in user's contributor, created on first use."""
    contributor, _ = Contributor.objects.get_or_create(
        user=user, defaults={"claimed_at": timezone.now()}
    )
    return contributor


@transaction.atomic
def contributor_claim(*, user: Any, token: str) -> Contributor:
    """Attach an anonymous device's work to the signed-in user's contributor.

    The device's workers and validated counters move to the user's contributor; the device token
    is revoked (its version bumped) so it cannot keep earning anonymously.
    """
    device = worker_token_verify(token=token)
    if device is None:
        raise ValueError("This worker token is invalid or revoked.")
    device = Contributor.objects.select_for_update().get(pk=device.pk)
    mine = Contributor.objects.filter(user=user).select_for_update().first()
    if device.user_id is not None:
        if device.user_id == user.pk:
            return device
        raise ValueError("This device already belongs to another account.")
    if mine is None:
        device.user = user
        device.claimed_at = timezone.now()
        device.save(update_fields=["user", "claimed_at"])
        return device
    Worker.objects.filter(contributor=device).update(contributor=mine)
    Assignment.objects.unscoped().filter(contributor=device).update(contributor=mine)
    Contributor.objects.filter(pk=mine.pk).update(
        validated_replicas=F("validated_replicas") + device.validated_replicas,
        validated_work_units=F("validated_work_units") + device.validated_work_units,
    )
    device.token_version += 1
    device.validated_replicas = 0
    device.validated_work_units = 0
    device.save(update_fields=["token_version", "validated_replicas", "validated_work_units"])
    mine.refresh_from_db()
    return mine


@transaction.atomic
def pool_worker_register(*, tenant: Any, actor: Any, name: str) -> tuple[Contributor, str]:
    """Register a worker of the tenant's private pool (Enterprise); returns it and its token."""
    from django.core.exceptions import PermissionDenied

    from tenants.services import audit_record

    if not tenant.policy.private_worker_pools:
        raise PermissionDenied(
            f"Private worker pools are part of FL Enterprise, not {tenant.policy.label}."
        )
    contributor = Contributor.objects.create(
        pool_tenant=tenant, display_name=name[:80] or "pool worker"
    )
    audit_record(
        tenant=tenant, actor=actor, action="pool_worker.registered", target=contributor.display_name
    )
    return contributor, worker_token_issue(contributor=contributor)


@transaction.atomic
def contributor_revoke_tokens(*, contributor: Contributor) -> Contributor:
    """Invalidate every token of a contributor (new ones can be issued)."""
    Contributor.objects.filter(pk=contributor.pk).update(token_version=F("token_version") + 1)
    contributor.refresh_from_db()
    return contributor


# ---------------------------------------------------------------- worker sessions


@dataclass(frozen=True, slots=True)
class WorkerSession:
    worker_id: uuid.UUID
    contributor_id: uuid.UUID
    pool_tenant_id: uuid.UUID | None
    outstanding: list[str]
    resumed: bool


@transaction.atomic
def worker_connect(
    *, contributor: Contributor, hello: dict[str, Any], channel_name: str
) -> WorkerSession:
    """Register (or resume) a worker for a validated ``hello`` message."""
    now = timezone.now()
    client = hello["client"]
    worker = None
    resume = hello.get("resume")
    if resume:
        worker = (
            Worker.objects.select_for_update()
            .filter(pk=resume, contributor=contributor, is_banned=False)
            .first()
        )
    resumed = worker is not None
    if worker is None:
        worker = Worker(contributor=contributor)
    worker.kind = client["kind"]
    worker.client_version = client.get("version", "")[:40]
    worker.user_agent = client.get("user_agent", "")[:300]
    worker.capabilities = hello["capabilities"]
    worker.slots = hello["slots"]
    worker.channel_name = channel_name
    worker.connected_at = now
    worker.last_seen_at = now
    worker.disconnected_at = None
    worker.is_online = True
    worker.save()
    outstanding = (
        [
            str(a)
            for a in Assignment.objects.unscoped()
            .filter(worker=worker, status=AssignmentStatus.ASSIGNED)
            .values_list("id", flat=True)
        ]
        if resumed
        else []
    )
    return WorkerSession(
        worker_id=worker.pk,
        contributor_id=contributor.pk,
        pool_tenant_id=contributor.pool_tenant_id,
        outstanding=outstanding,
        resumed=resumed,
    )


def worker_disconnect(*, worker_id: uuid.UUID) -> None:
    """Mark a worker offline. Its leases stay: a reconnect within the lease keeps its work."""
    Worker.objects.filter(pk=worker_id).update(
        is_online=False, disconnected_at=timezone.now(), channel_name=""
    )


def worker_set_slots(*, worker_id: uuid.UUID, slots: int) -> None:
    """Record how many tasks the worker runs at once."""
    Worker.objects.filter(pk=worker_id).update(slots=slots, last_seen_at=timezone.now())


# ---------------------------------------------------------------- claiming


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

    def message(self) -> dict[str, Any]:
        """The ``assign`` protocol message."""
        return {
            "v": 1,
            "type": "assign",
            "assignment": str(self.assignment_id),
            "job": str(self.job_id),
            "task": self.task_index,
            "kernel": {
                "name": self.kernel_name,
                "version": self.kernel_version,
                "sha256": self.kernel_sha256,
                "url": f"/kernels/{self.kernel_sha256}.wasm",
            },
            "input": {
                "lo": str(self.lo),
                "hi": str(self.hi),
                "seed": str(self.seed),
                "params": self.params,
            },
            "lease_ms": self.lease_ms,
            "work_units": self.work_units,
        }


def _trusted_alone(worker: Worker, rng: random.Random) -> bool:
    """Adaptive replication: may this worker's single result be accepted for a task?"""
    if worker.consecutive_valid < TRUST_THRESHOLD:
        return False
    spot_check = max(
        SPOT_CHECK_FLOOR, TRUST_THRESHOLD / (worker.consecutive_valid + TRUST_THRESHOLD)
    )
    return rng.random() >= spot_check


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
        .only(
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
        )[:count]
    )
    if not tasks:
        return []
    jobs = {
        job.pk: job
        for job in Job.objects.unscoped()
        .select_related("kernel")
        .filter(pk__in={t.job_id for t in tasks}, status=JobStatus.RUNNING)
    }
    now = timezone.now()
    rng = random.Random()  # noqa: S311 - spot-check sampling, not secrecy
    offers, assignments = [], []
    for task in tasks:
        job = jobs.get(task.job_id)
        if job is None:  # paused or cancelled between the flag and the lock
            Task.objects.unscoped().filter(pk=task.pk).update(dispatchable=False)
            continue
        task.active_replicas += 1
        if (
            job.adaptive_replication
            and not task.known_answer_sha256
            and task.active_replicas == 1
            and _trusted_alone(worker, rng)
        ):
            task.target_replicas = 1
        Task.objects.unscoped().filter(pk=task.pk).update(
            active_replicas=task.active_replicas,
            target_replicas=task.target_replicas,
            dispatchable=task.active_replicas < task.target_replicas,
        )
        assignment = Assignment(
            tenant_id=task.tenant_id,
            job_id=job.pk,
            task_id=task.pk,
            worker_id=worker.pk,
            contributor_id=contributor.pk,
            lease_expires_at=now + timedelta(seconds=job.lease_seconds),
        )
        assignments.append(assignment)
        offers.append(
            Offer(
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
        )
    Assignment.objects.bulk_create(assignments)
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


# ---------------------------------------------------------------- results and validation


@dataclass(slots=True)
class ResultOutcome:
    status: str  # accepted | duplicate | late | discarded
    wake: bool = False


def _check_output_shape(job: Job, output: bytes) -> None:
    """Refuse outputs whose size the kernel's declared layout cannot produce."""
    kernel = job.kernel
    if kernel.output_bytes is not None and len(output) != kernel.output_bytes:
        raise ValueError(f"{kernel.name} outputs {kernel.output_bytes} bytes, got {len(output)}")
    if kernel.reducer in ("best_k", "min_f64", "max_f64") and len(output) % 16:
        raise ValueError(f"{kernel.name} outputs 16-byte records, got {len(output)} bytes")


def _decrement_active(task: Task) -> None:
    task.active_replicas = max(0, task.active_replicas - 1)


@transaction.atomic
def result_submit(
    *,
    contributor_id: uuid.UUID,
    assignment_id: str,
    output: bytes,
    sha256: str,
    elapsed_ms: int | None,
) -> ResultOutcome:
    """Persist a replica's result, then validate its task. Safe to replay: counted once."""
    if hashlib.sha256(output).hexdigest() != sha256:
        raise ValueError("sha256 does not match the output bytes")
    try:
        assignment = (
            Assignment.objects.unscoped()
            .select_for_update(of=("self",))
            .select_related("task", "job__kernel")
            .get(pk=assignment_id, contributor_id=contributor_id)
        )
    except (Assignment.DoesNotExist, ValueError):
        return ResultOutcome(status="discarded")
    if assignment.status in (
        AssignmentStatus.RETURNED,
        AssignmentStatus.VALID,
        AssignmentStatus.INVALID,
        AssignmentStatus.LATE,
    ):
        return ResultOutcome(status="duplicate")
    if assignment.status == AssignmentStatus.ERROR:
        return ResultOutcome(status="discarded")
    _check_output_shape(assignment.job, output)
    task = Task.objects.unscoped().select_for_update().get(pk=assignment.task_id)
    late = assignment.status in (AssignmentStatus.EXPIRED, AssignmentStatus.CANCELLED)
    if late and (
        Assignment.objects.unscoped()
        .filter(task=task, contributor_id=contributor_id, status__in=COUNTED_REPLICA_STATUSES)
        .exclude(pk=assignment.pk)
        .exists()
    ):
        # The same contributor was given the task again after this lease expired: the newer
        # replica speaks for it.
        return ResultOutcome(status="discarded")
    assignment.output = output
    assignment.output_sha256 = sha256
    assignment.elapsed_ms = elapsed_ms
    assignment.returned_at = timezone.now()
    outcome = ResultOutcome(status="late" if late else "accepted")
    if task.status != TaskStatus.OPEN:
        # Validated (or cancelled) without this replica: compare for trust, never credit.
        assignment.status = AssignmentStatus.LATE
        assignment.save(
            update_fields=["output", "output_sha256", "elapsed_ms", "returned_at", "status"]
        )
        if task.status == TaskStatus.VALIDATED and task.canonical_sha256 != sha256:
            _trust_reset(assignment.worker_id, field_name="invalid_replicas")
        return outcome
    if late:
        task.active_replicas += 1  # an expired replica came back: it counts again
    assignment.status = AssignmentStatus.RETURNED
    assignment.save(
        update_fields=["output", "output_sha256", "elapsed_ms", "returned_at", "status"]
    )
    _task_validate(task, outcome)
    return outcome


def _task_validate(task: Task, outcome: ResultOutcome) -> None:
    """Decide a task from its returned replicas. Caller holds the task's row lock."""
    # The tenant comes along: metering a validated task needs its tier.
    job = Job.objects.unscoped().select_related("tenant").get(pk=task.job_id)
    returned = list(
        Assignment.objects.unscoped()
        .filter(task=task, status=AssignmentStatus.RETURNED)
        .select_related("worker")
        .only(
            "id", "output_sha256", "output", "worker_id", "contributor_id", "worker__channel_name"
        )
    )
    by_hash: dict[str, list[Assignment]] = {}
    for replica in returned:
        by_hash.setdefault(replica.output_sha256, []).append(replica)

    canonical = None
    if task.known_answer_sha256:
        canonical = task.known_answer_sha256 if task.known_answer_sha256 in by_hash else None
        wrong = [r for h, rs in by_hash.items() if h != task.known_answer_sha256 for r in rs]
        if wrong and canonical is None:
            # A worker failed a known-answer check; the check goes to someone else.
            _replicas_invalid(wrong)
            task.active_replicas = max(0, task.active_replicas - len(wrong))
            task.dispatchable = (
                job.status == JobStatus.RUNNING and task.active_replicas < task.target_replicas
            )
            task.save(update_fields=["active_replicas", "dispatchable"])
            outcome.wake = task.dispatchable
            return
    else:
        needed = 1 if task.target_replicas == 1 else job.quorum
        for digest, replicas in by_hash.items():
            if len(replicas) >= needed:
                canonical = digest
                break

    if canonical is not None:
        winners = by_hash[canonical]
        losers = [r for h, rs in by_hash.items() if h != canonical for r in rs]
        _replicas_valid(winners, task)
        _replicas_invalid(losers)
        task.status = TaskStatus.VALIDATED
        task.canonical_sha256 = canonical
        task.canonical_output = winners[0].output
        task.validated_at = timezone.now()
        task.dispatchable = False
        task.save(
            update_fields=[
                "status",
                "canonical_sha256",
                "canonical_output",
                "validated_at",
                "dispatchable",
                "active_replicas",
            ]
        )
        # Replicas still running are no longer needed: cancel them (a result they send anyway
        # is stored as late, compared, never credited).
        still_running = Assignment.objects.unscoped().filter(
            task=task, status=AssignmentStatus.ASSIGNED
        )
        for assignment_id, channel in still_running.values_list("id", "worker__channel_name"):
            realtime.send_on_commit(
                channel,
                {
                    "type": "worker.cancel",
                    "assignment": str(assignment_id),
                    "reason": "task_validated",
                },
            )
        still_running.update(status=AssignmentStatus.CANCELLED)
        if not task.known_answer_sha256:
            _meter_validated_task(task, job)
            Job.objects.unscoped().filter(pk=job.pk).update(
                tasks_validated=F("tasks_validated") + 1
            )
            validated, total = (
                Job.objects.unscoped().values_list("tasks_validated", "task_count").get(pk=job.pk)
            )
            if validated >= total:
                job_finish_if_done(job.pk)
        return

    # No agreement yet. When every live replica has reported, the task needs another one.
    all_reported = len(returned) >= task.active_replicas
    if all_reported and len(returned) >= task.target_replicas:
        if task.target_replicas < job.max_replicas:
            task.target_replicas += 1
            outcome.wake = True
            realtime.wake_dispatch_on_commit()
        else:
            _task_fail(task, job, reason=f"no {job.quorum} of {len(returned)} replicas agreed")
            return
    task.dispatchable = (
        job.status == JobStatus.RUNNING and task.active_replicas < task.target_replicas
    )
    outcome.wake = outcome.wake or task.dispatchable
    task.save(update_fields=["target_replicas", "active_replicas", "dispatchable"])


def _meter_validated_task(task: Task, job: Job) -> None:
    """Usage for the tenant and credits for the contributors, both posted after commit, once."""
    metering().task_validated(task=task, job=job)


def _task_fail(task: Task, job: Job, *, reason: str) -> None:
    task.status = TaskStatus.FAILED
    task.dispatchable = False
    task.save(update_fields=["status", "dispatchable", "active_replicas", "target_replicas"])
    Assignment.objects.unscoped().filter(task=task, status=AssignmentStatus.RETURNED).update(
        status=AssignmentStatus.INVALID
    )
    if task.known_answer_sha256:
        return
    Job.objects.unscoped().filter(pk=job.pk).update(tasks_failed=F("tasks_failed") + 1)
    locked = Job.objects.unscoped().select_for_update().get(pk=job.pk)
    if not locked.is_finished:
        locked.status = JobStatus.FAILED
        locked.status_reason = f"task {task.index} failed: {reason}"[:300]
        locked.completed_at = timezone.now()
        locked.save(update_fields=["status", "status_reason", "completed_at"])
        Task.objects.unscoped().filter(job=locked, status=TaskStatus.OPEN).update(
            status=TaskStatus.CANCELLED, dispatchable=False
        )
        job_event(job=locked, kind="failed", message=locked.status_reason)


def _replicas_valid(replicas: list[Assignment], task: Task) -> None:
    """Credit agreeing replicas once each (credited_at is set under the task lock)."""
    now = timezone.now()
    Assignment.objects.unscoped().filter(
        pk__in=[r.pk for r in replicas], credited_at__isnull=True
    ).update(status=AssignmentStatus.VALID, credited_at=now)
    # Replicas of one task come from distinct contributors and workers: one update each.
    Worker.objects.filter(pk__in=[r.worker_id for r in replicas]).update(
        consecutive_valid=F("consecutive_valid") + 1,
        validated_replicas=F("validated_replicas") + 1,
        validated_work_units=F("validated_work_units") + task.work_units,
    )
    Contributor.objects.filter(pk__in=[r.contributor_id for r in replicas]).update(
        validated_replicas=F("validated_replicas") + 1,
        validated_work_units=F("validated_work_units") + task.work_units,
    )
    for replica in replicas:
        realtime.send_on_commit(
            replica.worker.channel_name,
            {"type": "worker.credit", "validated": 1, "work_units": task.work_units},
        )


def _replicas_invalid(replicas: list[Assignment]) -> None:
    if not replicas:
        return
    Assignment.objects.unscoped().filter(pk__in=[r.pk for r in replicas]).update(
        status=AssignmentStatus.INVALID
    )
    for replica in replicas:
        _trust_reset(replica.worker_id, field_name="invalid_replicas")


def _trust_reset(worker_id: uuid.UUID, *, field_name: str) -> None:
    Worker.objects.filter(pk=worker_id).update(
        consecutive_valid=0, **{field_name: F(field_name) + 1}
    )


@transaction.atomic
def assignment_error(*, worker_id: uuid.UUID, assignment_id: str, code: str, message: str) -> bool:
    """A replica failed on its worker: free its slot for another worker, reset trust."""
    assignment = (
        Assignment.objects.unscoped()
        .select_for_update(of=("self",))
        .filter(pk=assignment_id, worker_id=worker_id, status=AssignmentStatus.ASSIGNED)
        .first()
    )
    if assignment is None:
        return False
    assignment.status = AssignmentStatus.ERROR
    assignment.error_code = code
    assignment.error_message = message[:500]
    assignment.save(update_fields=["status", "error_code", "error_message"])
    _release_replica(assignment.task_id)
    _trust_reset(worker_id, field_name="errored_replicas")
    return True


def _release_replica(task_id: int) -> None:
    """A live replica ended without a result: the task may be handed out again."""
    task = Task.objects.unscoped().select_for_update().get(pk=task_id)
    _decrement_active(task)
    if task.status == TaskStatus.OPEN:
        job_status = Job.objects.unscoped().values_list("status", flat=True).get(pk=task.job_id)
        task.dispatchable = (
            job_status == JobStatus.RUNNING and task.active_replicas < task.target_replicas
        )
    task.save(update_fields=["active_replicas", "dispatchable"])
    if task.dispatchable:
        realtime.wake_dispatch_on_commit()


def lease_sweep(*, batch: int = 500) -> int:
    """Expire leases past their deadline and requeue their tasks. Returns how many expired."""
    expired = 0
    while True:
        with transaction.atomic():
            due = list(
                Assignment.objects.unscoped()
                .select_for_update(skip_locked=True)
                .filter(status=AssignmentStatus.ASSIGNED, lease_expires_at__lt=timezone.now())
                .only("id", "task_id", "worker_id")[:batch]
            )
            for assignment in due:
                Assignment.objects.unscoped().filter(pk=assignment.pk).update(
                    status=AssignmentStatus.EXPIRED
                )
                _release_replica(assignment.task_id)
                _trust_reset(assignment.worker_id, field_name="expired_replicas")
        expired += len(due)
        if len(due) < batch:
            return expired


def job_deadline_sweep() -> int:
    """Fail running jobs whose deadline passed."""
    from jobs.services import _cancel_running_replicas

    failed = 0
    for job_id in (
        Job.objects.unscoped()
        .filter(status__in=(JobStatus.RUNNING, JobStatus.PAUSED), deadline__lt=timezone.now())
        .values_list("id", flat=True)
    ):
        with transaction.atomic():
            job = Job.objects.unscoped().select_for_update().get(pk=job_id)
            if job.is_finished or job.deadline is None or job.deadline >= timezone.now():
                continue
            job.status = JobStatus.FAILED
            job.status_reason = "Deadline passed before every task was validated"
            job.completed_at = timezone.now()
            job.save(update_fields=["status", "status_reason", "completed_at"])
            Task.objects.unscoped().filter(job=job, status=TaskStatus.OPEN).update(
                status=TaskStatus.CANCELLED, dispatchable=False
            )
            _cancel_running_replicas(job, reason="deadline")
            job_event(job=job, kind="failed", message=job.status_reason)
            failed += 1
    return failed
