"""Group commit's validation: what the quorum decisions of one flush's results do, set-based
in the flush's transaction (see :mod:`jobs.dispatch.batch_results`, which stores the results and
calls these under the row locks it holds).

Exactly as :mod:`jobs.dispatch.results` does item by item: a decision as if the results had
arrived one by one, winners credited once, losers and disagreeing late replicas penalised,
validated tasks closed, their live replicas cancelled, metered and counted, finished jobs
finished.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from django.db import connection

from jobs import realtime
from jobs.dispatch.batch_leases import update_from_values
from jobs.dispatch.sql import bound_cursor
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
class ReturnedRow:
    """A returned replica of a task the flush decides (``batch_results._RETURNED``)."""

    pk: uuid.UUID
    task_id: int
    output_sha256: str
    output: bytes
    worker_id: uuid.UUID
    contributor_id: uuid.UUID
    channel_name: str


def _status_set(ids: list[uuid.UUID], status: str, *, credit_at: Any = None) -> None:
    """These replicas' status (and, with ``credit_at``, their credit time, once: a replica
    credited before keeps its status and time), in one statement with the ids bound."""
    sets, params, where = "status = %s", [str(status)], ""
    if credit_at is not None:
        sets, where = "status = %s, credited_at = %s", "t.credited_at IS NULL"
        params.append(credit_at)
    update_from_values(
        Assignment._meta.db_table,
        [("id", "uuid")],
        [(pk,) for pk in ids],
        sets,
        where=where,
        leading_params=params,
    )


def decide_in_arrival_order(
    task: Task, job: Job, replicas: list[ReturnedRow], batch_ids: set[str]
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


def tasks_wait(tasks: list[Task], jobs: dict[uuid.UUID, Job]) -> None:
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


def tasks_accept(
    accepted: list[tuple[Task, Job, list[ReturnedRow], list[ReturnedRow], str]],
    now: Any,
    late: list[ReturnedRow],
) -> None:
    """Validated tasks: credit winners, penalise losers, close tasks, meter, count, finish."""
    winners = [r for _, _, won, _, _ in accepted for r in won]
    losers = [r for _, _, _, lost, _ in accepted for r in lost]
    if late:
        canonical = {task.pk: digest for task, _, _, _, digest in accepted}
        _status_set([r.pk for r in late], AssignmentStatus.LATE)
        # A late replica that disagrees with the canonical result loses trust, never credit.
        losers_late = [r for r in late if r.output_sha256 != canonical[r.task_id]]
    else:
        losers_late = []
    _status_set([r.pk for r in winners], AssignmentStatus.VALID, credit_at=now)
    _status_set([r.pk for r in losers], AssignmentStatus.INVALID)
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
                replica.channel_name,
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
    holds its row lock and is skipped (its result is stored as late).

    The statement goes by task (its foreign key's index: a few rows per task) and tests the
    status on the row, written so that the live-lease partial index cannot serve it. Given that
    index, the planner read all of it, filtered by task: on a young or busy table its statistics
    count a few dozen live leases while the index holds thousands of entries of replicas returned
    since the last vacuum, ~1.3 ms a flush for a query that usually finds nothing
    (``docs/benchmarks.md``)."""
    assignment, worker = Assignment._meta.db_table, Worker._meta.db_table
    with bound_cursor() as cursor:
        cursor.execute(
            f"SELECT a.id, w.channel_name FROM {assignment} a"  # noqa: S608
            f" JOIN {worker} w ON w.id = a.worker_id"
            # ``|| ''``: the partial index's predicate (status = 'assigned') is not implied.
            " WHERE a.task_id = ANY(%b::bigint[]) AND a.status || '' = %s"
            " FOR UPDATE OF a SKIP LOCKED",
            [task_ids, AssignmentStatus.ASSIGNED],
        )
        rows = cursor.fetchall()
    if not rows:
        return
    for assignment_id, channel in rows:
        realtime.send_on_commit(
            channel,
            {"type": "worker.cancel", "assignment": str(assignment_id), "reason": "task_validated"},
        )
    _status_set([row[0] for row in rows], AssignmentStatus.CANCELLED)
