"""Group commit's results: stored and decided set-based in the flush's transaction (see
:mod:`jobs.dispatch.batch`), the rare cases through the per-item code in the same transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from jobs import realtime
from jobs.dispatch.batch_leases import (
    update_from_values,
)
from jobs.dispatch.results import (
    _DISCARDED,
    _STORED,
    ResultOutcome,
    _check_output_shape,
    _task_validate,
    result_submit,
)
from jobs.metering import metering
from jobs.models import (
    Assignment,
    AssignmentStatus,
    Contributor,
    Job,
    JobStatus,
    Task,
    TaskStatus,
    Worker,
)
from jobs.quorum import ReturnedReplica, Verdict, quorum_decide
from jobs.services import job_finish_if_done


@dataclass(frozen=True, slots=True)
class ResultItem:
    """A result; with ``refill``, also claim that many tasks for ``worker_id`` once it is stored
    (same flush, same transaction: the next ``assign`` needs no second round trip)."""

    contributor_id: uuid.UUID
    assignment_id: str
    output: bytes
    sha256: str
    elapsed_ms: int | None
    worker_id: uuid.UUID | None = None
    refill: int = 0


def results_store_batch(*, items: list[ResultItem]) -> list[ResultOutcome | ValueError]:
    """Store and validate many results in the caller's transaction; outcomes in input order.

    Same outcomes as :func:`jobs.dispatch.results.result_submit` item by item (replays and
    repeats within the batch are ``duplicate``), with each replica counted and credited once."""
    outcomes: list[ResultOutcome | ValueError | None] = [None] * len(items)
    first_index: dict[str, int] = {}
    pending: list[int] = []
    repeats: list[tuple[int, int]] = []
    for index, item in enumerate(items):
        if hashlib.sha256(item.output).hexdigest() != item.sha256:
            outcomes[index] = ValueError("sha256 does not match the output bytes")
            continue
        try:
            key = str(uuid.UUID(item.assignment_id))
        except ValueError:
            outcomes[index] = ResultOutcome(status="discarded")
            continue
        if key in first_index:
            repeats.append((index, first_index[key]))
            continue
        first_index[key] = index
        pending.append(index)
    if pending:
        _results_store(items, pending, outcomes)
    for index, first in repeats:
        earlier = outcomes[first]
        stored = isinstance(earlier, ResultOutcome) and earlier.status in ("accepted", "late")
        outcomes[index] = ResultOutcome(status="duplicate") if stored else earlier
    return outcomes  # type: ignore[return-value]


def _results_store(
    items: list[ResultItem], pending: list[int], outcomes: list[ResultOutcome | ValueError | None]
) -> None:
    assignments = {
        str(a.pk): a
        for a in Assignment.objects.unscoped()
        .select_for_update(of=("self",))
        .select_related("job__kernel")
        .filter(pk__in=[items[i].assignment_id for i in pending])
        .order_by("pk")
        .only(
            "id",
            "status",
            "task_id",
            "job_id",
            "worker_id",
            "contributor_id",
            "job__kernel__name",
            "job__kernel__output_bytes",
            "job__kernel__reducer",
        )
    }
    live: list[tuple[int, Assignment]] = []
    for index in pending:
        item = items[index]
        assignment = assignments.get(str(uuid.UUID(item.assignment_id)))
        if assignment is None or assignment.contributor_id != item.contributor_id:
            outcomes[index] = ResultOutcome(status="discarded")
        elif assignment.status in _STORED:
            outcomes[index] = ResultOutcome(status="duplicate")
        elif assignment.status in _DISCARDED:
            outcomes[index] = ResultOutcome(status="discarded")
        else:
            try:
                _check_output_shape(assignment.job, item.output)
            except ValueError as exc:
                outcomes[index] = exc
                continue
            live.append((index, assignment))
    if not live:
        return
    tasks = {
        t.pk: t
        for t in Task.objects.unscoped()
        .select_for_update()
        .filter(pk__in={a.task_id for _, a in live})
        .order_by("pk")
    }
    # Rare cases take the per-item path (in this transaction, under the locks already held);
    # every result for such a task goes with them so one task is never decided twice over.
    slow_tasks = {
        a.task_id
        for _, a in live
        if a.status == AssignmentStatus.EXPIRED
        or tasks[a.task_id].status != TaskStatus.OPEN
        or tasks[a.task_id].known_answer_sha256
    }
    fast = []
    for index, assignment in live:
        if assignment.task_id not in slow_tasks:
            fast.append((index, assignment))
            continue
        item = items[index]
        try:
            outcomes[index] = result_submit(
                contributor_id=item.contributor_id,
                assignment_id=item.assignment_id,
                output=item.output,
                sha256=item.sha256,
                elapsed_ms=item.elapsed_ms,
            )
        except ValueError as exc:
            outcomes[index] = exc
    if fast:
        _results_store_fast(items, fast, tasks, outcomes)


def _results_store_fast(
    items: list[ResultItem],
    fast: list[tuple[int, Assignment]],
    tasks: dict[int, Task],
    outcomes: list[ResultOutcome | ValueError | None],
) -> None:
    """Live replicas of open tasks: store, decide, credit and meter set-based."""
    now = timezone.now()
    rows = []
    for offset, (index, assignment) in enumerate(fast):
        item = items[index]
        # Arrival order survives the shared timestamp: quorum ties go to the earliest return.
        rows.append(
            (
                str(assignment.pk),
                item.output,
                item.sha256,
                item.elapsed_ms,
                now + timedelta(microseconds=offset),
            )
        )
        outcomes[index] = ResultOutcome(status="accepted")
    update_from_values(
        Assignment._meta.db_table,
        [
            ("id", "uuid"),
            ("output", "bytea"),
            ("sha", "text"),
            ("elapsed", "integer"),
            ("returned", "timestamptz"),
        ],
        rows,
        f"output = v.output, output_sha256 = v.sha, elapsed_ms = v.elapsed, "
        f"returned_at = v.returned, status = '{AssignmentStatus.RETURNED}'",
    )
    task_ids = {a.task_id for _, a in fast}
    returned: dict[int, list[Assignment]] = defaultdict(list)
    for replica in (
        Assignment.objects.unscoped()
        .filter(task_id__in=task_ids, status=AssignmentStatus.RETURNED)
        .order_by("returned_at", "id")
        .select_related("worker")
        .only(
            "id",
            "task_id",
            "output_sha256",
            "output",
            "worker_id",
            "contributor_id",
            "worker__channel_name",
        )
    ):
        returned[replica.task_id].append(replica)
    jobs = {
        job.pk: job
        for job in Job.objects.unscoped()
        .select_related("tenant")
        .filter(pk__in={tasks[t].job_id for t in task_ids})
    }
    by_index = {a.task_id: index for index, a in fast}
    accepted: list[tuple[Task, Job, list[Assignment], list[Assignment], str]] = []
    waiting: list[Task] = []
    batch_ids = {str(a.pk) for _, a in fast}
    late: list[Assignment] = []
    for task_id in sorted(task_ids):
        task, replicas = tasks[task_id], returned[task_id]
        job = jobs[task.job_id]
        decision, used = _decide_in_arrival_order(task, job, replicas, batch_ids)
        if decision.verdict == Verdict.CANONICAL:
            winners = {r.id for r in decision.winners}
            counted = replicas[:used]
            accepted.append(
                (
                    task,
                    job,
                    [r for r in counted if r.pk in winners],
                    [r for r in counted if r.pk not in winners],
                    decision.canonical_sha256,
                )
            )
            # Results of this batch that came after the quorum: the task was validated
            # without them, as if they had arrived a moment later (stored, compared, uncredited).
            late.extend(replicas[used:])
        elif decision.verdict == Verdict.WAIT:
            waiting.append(task)
        else:
            # Another replica or a failed task: rare, and the per-item code says it once.
            outcome = outcomes[by_index[task_id]]
            assert isinstance(outcome, ResultOutcome)  # noqa: S101 - set just above
            _task_validate(task, outcome)
    _tasks_wait(waiting, jobs)
    if accepted:
        _tasks_accept(accepted, now, late)


def _decide_in_arrival_order(
    task: Task, job: Job, replicas: list[Assignment], batch_ids: set[str]
) -> tuple[Any, int]:
    """Decide as if the batch's results had arrived one by one: the first canonical decision
    stands, with how many replicas it used (later ones are late, exactly as item by item)."""

    def decide(count: int) -> Any:
        return quorum_decide(
            returned=[
                ReturnedReplica(
                    id=r.pk,
                    sha256=r.output_sha256,
                    worker_id=r.worker_id,
                    contributor_id=r.contributor_id,
                )
                for r in replicas[:count]
            ],
            target_replicas=task.target_replicas,
            quorum=job.quorum,
            active_replicas=task.active_replicas,
            max_replicas=job.max_replicas,
        )

    first_new = next((i for i, r in enumerate(replicas) if str(r.pk) in batch_ids), len(replicas))
    for count in range(first_new + 1, len(replicas)):
        decision = decide(count)
        if decision.verdict == Verdict.CANONICAL:
            return decision, count
    return decide(len(replicas)), len(replicas)


def _tasks_wait(tasks: list[Task], jobs: dict[uuid.UUID, Job]) -> None:
    """Tasks still waiting for live replicas: only their dispatchable flag may change."""
    changed = []
    for task in tasks:
        dispatchable = (
            jobs[task.job_id].status == JobStatus.RUNNING
            and task.active_replicas < task.target_replicas
        )
        if dispatchable != task.dispatchable:
            task.dispatchable = dispatchable
            changed.append(task)
    if changed:
        # UPDATE ... FROM (VALUES ...): bulk_update's CASE per row and field costs more CPU
        # building the statement than PostgreSQL spends running it.
        update_from_values(
            Task._meta.db_table,
            [("id", "bigint"), ("dispatchable", "boolean")],
            [(task.pk, task.dispatchable) for task in changed],
            "dispatchable = v.dispatchable",
        )
        ready = sum(t.target_replicas - t.active_replicas for t in changed if t.dispatchable)
        if ready:
            realtime.wake_dispatch_on_commit(tasks=ready)


def _tasks_accept(
    accepted: list[tuple[Task, Job, list[Assignment], list[Assignment], str]],
    now: Any,
    late: list[Assignment],
) -> None:
    """Validated tasks: credit winners, penalise losers, close tasks, meter, count, finish."""
    winners = [r for _, _, won, _, _ in accepted for r in won]
    losers = [r for _, _, _, lost, _ in accepted for r in lost]
    if late:
        canonical = {task.pk: digest for task, _, _, _, digest in accepted}
        Assignment.objects.unscoped().filter(pk__in=[r.pk for r in late]).update(
            status=AssignmentStatus.LATE
        )
        # A late replica that disagrees with the canonical result loses trust, never credit.
        losers_late = [r for r in late if r.output_sha256 != canonical[r.task_id]]
    else:
        losers_late = []
    Assignment.objects.unscoped().filter(
        pk__in=[r.pk for r in winners], credited_at__isnull=True
    ).update(status=AssignmentStatus.VALID, credited_at=now)
    if losers:
        Assignment.objects.unscoped().filter(pk__in=[r.pk for r in losers]).update(
            status=AssignmentStatus.INVALID
        )
    worker_valid: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0])
    contributor_valid: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0])
    for task, _, won, _, _ in accepted:
        for replica in won:
            for totals, key in (
                (worker_valid, replica.worker_id),
                (contributor_valid, replica.contributor_id),
            ):
                totals[key][0] += 1
                totals[key][1] += task.work_units
            realtime.send_on_commit(
                replica.worker.channel_name,
                {"type": "worker.credit", "validated": 1, "work_units": task.work_units},
            )
    counters = [("id", "uuid"), ("n", "bigint"), ("units", "bigint")]
    update_from_values(
        Worker._meta.db_table,
        counters,
        [(str(k), n, units) for k, (n, units) in sorted(worker_valid.items(), key=str)],
        "consecutive_valid = t.consecutive_valid + v.n, "
        "validated_replicas = t.validated_replicas + v.n, "
        "validated_work_units = t.validated_work_units + v.units",
    )
    update_from_values(
        Contributor._meta.db_table,
        counters,
        [(str(k), n, units) for k, (n, units) in sorted(contributor_valid.items(), key=str)],
        "validated_replicas = t.validated_replicas + v.n, "
        "validated_work_units = t.validated_work_units + v.units",
    )
    # After the increments: a worker that also lost in this batch starts its trust over.
    invalid = Counter(r.worker_id for r in [*losers, *losers_late])
    update_from_values(
        Worker._meta.db_table,
        [("id", "uuid"), ("n", "bigint")],
        [(str(k), n) for k, n in sorted(invalid.items(), key=str)],
        "consecutive_valid = 0, invalid_replicas = t.invalid_replicas + v.n",
    )
    closed = []
    for task, _, won, _, digest in accepted:
        task.status = TaskStatus.VALIDATED
        task.canonical_sha256 = digest
        task.canonical_output = won[0].output
        task.validated_at = now
        task.dispatchable = False
        closed.append(task)
    update_from_values(
        Task._meta.db_table,
        [("id", "bigint"), ("sha", "varchar"), ("output", "bytea")],
        [(task.pk, task.canonical_sha256, task.canonical_output) for task in closed],
        "status = %s, canonical_sha256 = v.sha, canonical_output = v.output, "
        "validated_at = %s, dispatchable = FALSE",
        leading_params=[TaskStatus.VALIDATED, now],
    )
    _replicas_cancel_running_batch(task_ids=[t.pk for t in closed])
    # Known-answer tasks never reach here (they take the per-item path).
    metering().tasks_validated(tasks=[(task, job) for task, job, _, _, _ in accepted])
    per_job = Counter(job.pk for _, job, _, _, _ in accepted)
    job_table = Job._meta.db_table
    values = ", ".join(["(%s::uuid, %s::integer)"] * len(per_job))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {job_table} AS t SET tasks_validated = t.tasks_validated + v.n "  # noqa: S608
            f"FROM (VALUES {values}) AS v(id, n) WHERE t.id = v.id "
            "RETURNING t.id, t.tasks_validated, t.task_count",
            [
                value
                for job_id in sorted(per_job, key=str)
                for value in (str(job_id), per_job[job_id])
            ],
        )
        done = [job_id for job_id, validated, total in cursor.fetchall() if validated >= total]
    for job_id in sorted(done, key=str):
        job_finish_if_done(job_id)


def _replicas_cancel_running_batch(*, task_ids: list[int]) -> None:
    """Live replicas of tasks just validated are no longer needed: cancel them (one query).

    As in ``replicas_cancel_running``: a replica whose result another transaction is storing
    holds its row lock and is skipped (its result is stored as late)."""
    live = Assignment.objects.unscoped().filter(
        task_id__in=task_ids, status=AssignmentStatus.ASSIGNED
    )
    rows = list(
        live.select_for_update(skip_locked=True, of=("self",)).values_list(
            "id", "worker__channel_name"
        )
    )
    if not rows:
        return
    for assignment_id, channel in rows:
        realtime.send_on_commit(
            channel,
            {"type": "worker.cancel", "assignment": str(assignment_id), "reason": "task_validated"},
        )
    Assignment.objects.unscoped().filter(pk__in=[row[0] for row in rows]).update(
        status=AssignmentStatus.CANCELLED
    )
