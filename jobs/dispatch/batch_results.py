"""Group commit's results: stored and decided set-based in the flush's transaction (see
:mod:`jobs.dispatch.batch`), the rare cases through the per-item code in the same transaction.
What a decision does to tasks, replicas, workers and jobs is :mod:`jobs.dispatch.batch_validation`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from jobs.dispatch.batch_leases import (
    update_from_values,
)
from jobs.dispatch.batch_validation import (
    ReturnedRow,
    decide_in_arrival_order,
    tasks_accept,
    tasks_wait,
)
from jobs.dispatch.results import (
    _DISCARDED,
    _STORED,
    ResultOutcome,
    _check_output_shape,
    _task_validate,
    result_submit,
)
from jobs.dispatch.sql import bound_cursor, uuid_array
from jobs.models import (
    Assignment,
    AssignmentStatus,
    Job,
    Task,
    TaskStatus,
)
from jobs.quorum import Verdict


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


@dataclass(frozen=True, slots=True)
class KernelShape:
    """What a result's size is checked against (``results._check_output_shape``)."""

    name: str
    output_bytes: int | None
    reducer: str


@dataclass(frozen=True, slots=True)
class NamedRow:
    """The assignment a result names, read and locked by the flush (``_NAMED``)."""

    pk: uuid.UUID
    status: str
    task_id: int
    job_id: uuid.UUID
    worker_id: uuid.UUID
    contributor_id: uuid.UUID
    kernel: KernelShape


# The assignments a flush's results name, locked in id order, with their kernels' output layout.
# Rows, not models, with the ids as one array parameter: the ORM's ``pk__in`` quoted each id into
# the SQL text and built three model instances per row (1.95 against 0.42 ms of CPU for 32
# results on the faster machine, ``bench_result_rows.py``).
_NAMED = (
    "SELECT a.id, a.status, a.task_id, a.job_id, a.worker_id, a.contributor_id, "
    "k.name, k.output_bytes, k.reducer "
    "FROM jobs_assignment a JOIN jobs_job j ON j.id = a.job_id "
    "JOIN jobs_kernel k ON k.id = j.kernel_id "
    "WHERE a.id = ANY(%b) ORDER BY a.id FOR UPDATE OF a"
)

# Every returned replica of the flush's tasks, in arrival order, with its worker's channel.
_RETURNED = (
    "SELECT a.id, a.task_id, a.output_sha256, a.output, a.worker_id, a.contributor_id, "
    "w.channel_name "
    "FROM jobs_assignment a JOIN jobs_worker w ON w.id = a.worker_id "
    "WHERE a.task_id = ANY(%b) AND a.status = %s ORDER BY a.returned_at, a.id"
)


def _named(ids: list[str]) -> dict[str, NamedRow]:
    """``_NAMED`` for these assignment ids (valid UUIDs), by id as text."""
    with bound_cursor() as cursor:
        cursor.execute(_NAMED, [uuid_array(ids)])
        return {str(row[0]): NamedRow(*row[:6], KernelShape(*row[6:])) for row in cursor.fetchall()}


def _returned(task_ids: set[int]) -> list[ReturnedRow]:
    """``_RETURNED`` for these tasks."""
    with bound_cursor() as cursor:
        cursor.execute(_RETURNED, [sorted(task_ids), AssignmentStatus.RETURNED.value])
        return [ReturnedRow(*row) for row in cursor.fetchall()]


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
    assignments = _named([items[i].assignment_id for i in pending])
    live: list[tuple[int, NamedRow]] = []
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
                _check_output_shape(assignment.kernel, item.output)
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
    fast: list[tuple[int, NamedRow]],
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
                assignment.pk,
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
    returned: dict[int, list[ReturnedRow]] = defaultdict(list)
    for replica in _returned(task_ids):
        returned[replica.task_id].append(replica)
    jobs = {
        job.pk: job
        for job in Job.objects.unscoped()
        .select_related("tenant")
        .filter(pk__in={tasks[t].job_id for t in task_ids})
    }
    by_index = {a.task_id: index for index, a in fast}
    accepted: list[tuple[Task, Job, list[ReturnedRow], list[ReturnedRow], str]] = []
    waiting: list[Task] = []
    batch_ids = {str(a.pk) for _, a in fast}
    late: list[ReturnedRow] = []
    for task_id in sorted(task_ids):
        task, replicas = tasks[task_id], returned[task_id]
        job = jobs[task.job_id]
        decision, used = decide_in_arrival_order(task, job, replicas, batch_ids)
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
    tasks_wait(waiting, jobs)
    if accepted:
        tasks_accept(accepted, now, late)
