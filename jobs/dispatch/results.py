"""Results and validation: a replica's output is stored, then its task is decided.

The decision itself is :func:`jobs.quorum.quorum_decide` (pure); this module loads the returned
replicas under the task's row lock, asks, and applies the answer: trust, credit counters,
metering, cancelling replicas no longer needed, failing the task (and the job), or asking for
one more replica.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from jobs import realtime
from jobs.kernel_models import Reducer
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
from jobs.quorum import QuorumDecision, ReturnedReplica, Verdict, quorum_decide
from jobs.services import job_event, job_finish_if_done, replicas_cancel_running


@dataclass(slots=True)
class ResultOutcome:
    # accepted | duplicate | late (an expired replica's result) | discarded (cancelled, errored,
    # superseded or not this contributor's)
    status: str
    wake: bool = False
    # Group commit: the tasks claimed for the same worker in the result's transaction (refill).
    offers: list = field(default_factory=list)


def _check_output_shape(kernel: Any, output: bytes) -> None:
    """Refuse outputs whose size the kernel's declared layout cannot produce (``kernel``: a
    ``Kernel`` or a row with its ``name``, ``output_bytes`` and ``reducer``)."""
    if kernel.output_bytes is not None and len(output) != kernel.output_bytes:
        raise ValueError(f"{kernel.name} outputs {kernel.output_bytes} bytes, got {len(output)}")
    if kernel.reducer in (Reducer.BEST_K, Reducer.MIN_F64, Reducer.MAX_F64) and len(output) % 16:
        raise ValueError(f"{kernel.name} outputs 16-byte records, got {len(output)} bytes")


_STORED = (
    AssignmentStatus.RETURNED,
    AssignmentStatus.VALID,
    AssignmentStatus.INVALID,
    AssignmentStatus.LATE,
)
# The server told these replicas to stop (or they gave up): whatever they send is not used.
_DISCARDED = (AssignmentStatus.ERROR, AssignmentStatus.CANCELLED)


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
    if assignment.status in _STORED:
        return ResultOutcome(status="duplicate")
    if assignment.status in _DISCARDED:
        # A cancelled replica (job paused or cancelled, task validated without it) was told to
        # stop; its task no longer counts it, so its result is neither stored nor compared.
        return ResultOutcome(status="discarded")
    _check_output_shape(assignment.job.kernel, output)
    task = Task.objects.unscoped().select_for_update().get(pk=assignment.task_id)
    late = assignment.status == AssignmentStatus.EXPIRED
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
    stored_fields = ["output", "output_sha256", "elapsed_ms", "returned_at", "status"]
    if task.status != TaskStatus.OPEN:
        # Validated (or cancelled) without this replica: compare for trust, never credit.
        assignment.status = AssignmentStatus.LATE
        assignment.save(update_fields=stored_fields)
        if task.status == TaskStatus.VALIDATED and task.canonical_sha256 != sha256:
            trust_reset(assignment.worker_id, field_name="invalid_replicas")
        return outcome
    if late:
        task.active_replicas += 1  # an expired replica came back: it counts again
    assignment.status = AssignmentStatus.RETURNED
    assignment.save(update_fields=stored_fields)
    _task_validate(task, outcome)
    return outcome


def _task_validate(task: Task, outcome: ResultOutcome) -> None:
    """Decide a task from its returned replicas and apply it. Caller holds the task's row lock."""
    job = Job.objects.unscoped().select_related("tenant").get(pk=task.job_id)
    returned = {
        replica.pk: replica
        for replica in Assignment.objects.unscoped()
        .filter(task=task, status=AssignmentStatus.RETURNED)
        .order_by("returned_at", "id")
        .select_related("worker")
        .only(
            "id", "output_sha256", "output", "worker_id", "contributor_id", "worker__channel_name"
        )
    }
    decision = quorum_decide(
        returned=[
            ReturnedReplica(
                id=r.pk,
                sha256=r.output_sha256,
                worker_id=r.worker_id,
                contributor_id=r.contributor_id,
            )
            for r in returned.values()
        ],
        target_replicas=task.target_replicas,
        quorum=job.quorum,
        known_answer_sha256=task.known_answer_sha256,
        active_replicas=task.active_replicas,
        max_replicas=job.max_replicas,
    )

    def rows(replicas: tuple[ReturnedReplica, ...]) -> list[Assignment]:
        return [returned[r.id] for r in replicas]

    if decision.verdict == Verdict.CANONICAL:
        _task_accept(task, job, decision, rows(decision.winners), rows(decision.losers))
        return
    if decision.verdict == Verdict.FAIL:
        _task_fail(task, job, reason=decision.reason)
        return
    if decision.verdict == Verdict.KNOWN_ANSWER_FAILED:
        # A worker failed a known-answer check; the check goes to someone else.
        _replicas_invalid(rows(decision.losers))
        task.active_replicas = max(0, task.active_replicas - len(decision.losers))
    elif decision.verdict == Verdict.NEED_REPLICA:
        task.target_replicas = decision.target_replicas
        outcome.wake = True
        realtime.wake_dispatch_on_commit(tasks=1)
    task.dispatchable = (
        job.status == JobStatus.RUNNING and task.active_replicas < task.target_replicas
    )
    outcome.wake = outcome.wake or task.dispatchable
    task.save(update_fields=["target_replicas", "active_replicas", "dispatchable"])


def _task_accept(
    task: Task,
    job: Job,
    decision: QuorumDecision,
    winners: list[Assignment],
    losers: list[Assignment],
) -> None:
    """The task has its canonical result: credit, penalise, meter, and finish the job if done."""
    _replicas_valid(winners, task)
    _replicas_invalid(losers)
    task.status = TaskStatus.VALIDATED
    task.canonical_sha256 = decision.canonical_sha256
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
    # Replicas still running are no longer needed: cancel them (a result they send anyway is
    # acknowledged as discarded).
    replicas_cancel_running(job=job, task=task, reason="task_validated")
    if task.known_answer_sha256:
        return
    metering().task_validated(task=task, job=job)
    Job.objects.unscoped().filter(pk=job.pk).update(tasks_validated=F("tasks_validated") + 1)
    validated, total = (
        Job.objects.unscoped().values_list("tasks_validated", "task_count").get(pk=job.pk)
    )
    if validated >= total:
        job_finish_if_done(job.pk)


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
        trust_reset(replica.worker_id, field_name="invalid_replicas")


def trust_reset(worker_id: uuid.UUID, *, field_name: str) -> None:
    """A worker's result was invalid, errored or timed out: its trust starts over."""
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
    replica_release(task_id=assignment.task_id)
    trust_reset(worker_id, field_name="errored_replicas")
    return True


def replica_release(*, task_id: int) -> None:
    """A live replica ended without a result: the task may be handed out again."""
    task = Task.objects.unscoped().select_for_update().get(pk=task_id)
    task.active_replicas = max(0, task.active_replicas - 1)
    if task.status == TaskStatus.OPEN:
        job_status = Job.objects.unscoped().values_list("status", flat=True).get(pk=task.job_id)
        task.dispatchable = (
            job_status == JobStatus.RUNNING and task.active_replicas < task.target_replicas
        )
    task.save(update_fields=["active_replicas", "dispatchable"])
    if task.dispatchable:
        realtime.wake_dispatch_on_commit(tasks=1)
