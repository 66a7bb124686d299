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
from jobs.dispatch.batch_validation import decide_in_arrival_order, tasks_accept, tasks_wait
from jobs.dispatch.results import (
    _DISCARDED,
    _STORED,
    ResultOutcome,
    _check_output_shape,
    _task_validate,
    result_submit,
)
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
