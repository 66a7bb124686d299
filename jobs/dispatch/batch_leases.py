"""Group commit's leases: claims for many workers in one statement each, and heartbeats for
every held lease in one UPDATE (see :mod:`jobs.dispatch.batch` for the transaction they run in).
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.utils import timezone

from jobs.dispatch.claim import (
    CLAIM_FIELDS,
    AssignmentRow,
    ClaimTask,
    ClaimWorker,
    Offer,
    assignment_claim,
    assignments_insert,
    offer_of,
    replica_take,
    running_jobs_of,
)
from jobs.dispatch.queue_fill import queue_fill_request
from jobs.dispatch.sql import bound_cursor, uuid_array
from jobs.models import (
    COUNTED_REPLICA_STATUSES,
    Assignment,
    AssignmentStatus,
    Contributor,
    Job,
    Task,
    Worker,
)


@dataclass(frozen=True, slots=True)
class HeartbeatItem:
    worker_id: uuid.UUID
    assignment_id: str


@dataclass(frozen=True, slots=True)
class ClaimItem:
    worker_id: uuid.UUID
    count: int
    # A socket's prefetch, claimed after its first claim's assigns went out: it may wait a
    # flush or two while other sockets' first claims go first (``jobs.dispatch.flusher``).
    prefetch: bool = False


# ---------------------------------------------------------------- claims

# How many times a batched claim locks more tasks when its claimers' own held some of those it
# locked (each round one SKIP LOCKED select, one read of what they hold).
CLAIM_ROUNDS = 3

# What a claim reads of its workers (not their capabilities' JSON), by id: id, contributor,
# consecutive valid results, banned, contributor banned, contributor's private pool.
_CLAIM_WORKERS = (
    "SELECT w.id, w.contributor_id, w.consecutive_valid, w.is_banned, c.is_banned, "  # noqa: S608
    f"c.pool_tenant_id FROM {Worker._meta.db_table} AS w "
    f"JOIN {Contributor._meta.db_table} AS c ON c.id = w.contributor_id "
    "WHERE w.id = ANY(%b::uuid[])"
)

# The public queue's next tasks, locked, as ``ClaimTask`` rows. Written out rather than built by
# the ORM: the statement is the same every flush, and its rows are read as tuples.
_LOCK_TASKS = (
    f"SELECT {', '.join(f'"{name}"' for name in CLAIM_FIELDS)} "  # noqa: S608 - names only
    f"FROM {Task._meta.db_table} "
    "WHERE dispatchable AND NOT private_pool AND NOT (id = ANY(%b::bigint[])) "
    "ORDER BY priority DESC, id ASC LIMIT %s FOR UPDATE SKIP LOCKED"
)

# How many replicas the public queue's first task still wants (not locked: an estimate of how
# many each of the tasks a claim locks next can give).
_HEAD_OPEN = (
    f"SELECT target_replicas - active_replicas FROM {Task._meta.db_table} "  # noqa: S608
    "WHERE dispatchable AND NOT private_pool AND NOT (id = ANY(%b::bigint[])) "
    "ORDER BY priority DESC, id ASC LIMIT 1"
)


def _claim_workers(ids: set[uuid.UUID]) -> dict[uuid.UUID, tuple]:
    """What a claim reads of its workers (``_CLAIM_WORKERS``), by id, with the ids as one array
    parameter. The ORM's ``pk__in`` quoted each id into the SQL text in Python (and sorted by
    the model's ordering): ~7 ms of a 256-claim flush's CPU on the slower machine
    (``docs/benchmarks.md``)."""
    with bound_cursor() as cursor:
        cursor.execute(_CLAIM_WORKERS, [uuid_array(ids)])
        return {row[0]: row for row in cursor.fetchall()}


def claims_batch(*, items: list[ClaimItem]) -> list[list[Offer]]:
    """Claim for many workers at once: one ``SKIP LOCKED`` select of as many dispatchable tasks
    as the replicas wanted need (a task's open replicas go to as many claimers), one read of
    what the claimers' contributors already hold of them (again, up to ``CLAIM_ROUNDS`` times,
    only if that left claimers short), one UPDATE of the tasks and one INSERT of the
    assignments (both with one array per column). Offers in input order.

    Replicas of a task go to distinct contributors (checked here, and by the partial unique
    index). Private-pool workers, rare, claim through :func:`assignment_claim`. Rows are read
    and written as tuples: no model instance is built."""
    offers: list[list[Offer]] = [[] for _ in items]
    wanted = [(index, item) for index, item in enumerate(items) if item.count > 0]
    if not wanted:
        return offers
    workers = _claim_workers({item.worker_id for _, item in wanted})
    public = []
    for index, item in wanted:
        row = workers.get(item.worker_id)
        if row is None or row[3] or row[4]:  # unknown, or it or its contributor banned
            continue
        if row[5] is not None:
            offers[index] = assignment_claim(worker_id=item.worker_id, count=item.count)
        else:
            public.append((index, item, ClaimWorker(*row[:3])))
    if not public:
        return offers
    contributors = uuid_array({worker.contributor_id for _, _, worker in public})
    now = timezone.now()
    rng = random.Random()  # noqa: S311 - spot-check sampling, not secrecy
    queue = deque((index, item.count, worker) for index, item, worker in public)
    assignments: list[AssignmentRow] = []
    changed: list[ClaimTask] = []
    stopped: list[int] = []
    locked: list[int] = []
    held: set[tuple[int, uuid.UUID]] = set()
    # Lock as many tasks as the replicas still wanted need, each task's open replicas going to
    # as many claimers of distinct contributors: as many tasks as the wanted replicas divided
    # by the open replicas of the queue's first task (a job start's tasks each want their
    # quorum). That is enough unless later tasks want fewer, or tasks the claimers' own
    # contributors hold (a task waiting for its second replica stays dispatchable) are skipped
    # for them; then the next tasks, as many as are still wanted. Locking more up front kept
    # other processes' claims, running at the same time, from tasks this flush did not take (a
    # job start's first claims found none).
    for _ in range(CLAIM_ROUNDS):
        wanted_now = sum(need for _, need, _ in queue)
        if wanted_now <= 0:
            break
        with bound_cursor() as cursor:
            cursor.execute(_HEAD_OPEN, [locked])
            head = cursor.fetchone()
            if head is None:  # the queue is empty for now
                break
            limit = -(-wanted_now // max(1, head[0]))
            cursor.execute(_LOCK_TASKS, [locked, limit])
            tasks = [ClaimTask(*row) for row in cursor.fetchall()]
        if not tasks:
            break
        locked += [t.id for t in tasks]
        held |= _held(tasks, contributors)
        jobs = running_jobs_of(tasks)
        for task in tasks:
            job = jobs.get(task.job_id)
            if job is None:  # paused or cancelled between the flag and the lock
                stopped.append(task.id)
                continue
            taken = False
            for _ in range(len(queue)):
                if task.active_replicas >= task.target_replicas or not queue:
                    break
                index, need, worker = queue.popleft()
                if (task.id, worker.contributor_id) in held:
                    queue.append((index, need, worker))
                    continue
                held.add((task.id, worker.contributor_id))
                assignment = replica_take(task=task, job=job, worker=worker, rng=rng, now=now)
                assignments.append(assignment)
                offers[index].append(offer_of(assignment[0], task, job))
                taken = True
                if need > 1:
                    queue.append((index, need - 1, worker))
            if taken:
                changed.append(task)
            if not queue:
                break
        if len(tasks) < limit:  # the queue is empty for now
            break
    if stopped:
        Task.objects.unscoped().filter(pk__in=stopped).update(dispatchable=False)
    update_from_values(
        Task._meta.db_table,
        [("id", "bigint"), ("active", "integer"), ("target", "integer")],
        [(t.id, t.active_replicas, t.target_replicas) for t in changed],
        "active_replicas = v.active, target_replicas = v.target, "
        "dispatchable = v.active < v.target",
    )
    assignments_insert(assignments)
    # Lazy queue filling: the jobs whose low-water mark this flush took ask for their next fill.
    queue_fill_request(marks=[(t.id, t.job_id) for t in changed if t.queue_low_mark])
    return offers


def _held(
    tasks: list[ClaimTask], contributors: list[uuid.UUID | None]
) -> set[tuple[int, uuid.UUID]]:
    """Which of ``tasks`` the ``contributors`` hold a counted replica of, as (task, contributor)
    pairs (arrays, not an IN list of a placeholder per task)."""
    with bound_cursor() as cursor:
        cursor.execute(
            f"SELECT task_id, contributor_id FROM {Assignment._meta.db_table} "  # noqa: S608
            "WHERE task_id = ANY(%b::bigint[]) AND contributor_id = ANY(%b::uuid[]) "
            "AND status = ANY(%b::varchar[])",
            [
                [t.id for t in tasks],
                contributors,
                [str(status) for status in COUNTED_REPLICA_STATUSES],
            ],
        )
        return set(cursor.fetchall())


# ---------------------------------------------------------------- heartbeats


def heartbeats_extend_batch(*, items: list[HeartbeatItem]) -> list[bool]:
    """Extend every held lease named in ``items`` with one UPDATE; False where none is held."""
    if not items:
        return []
    now = timezone.now()
    values = ", ".join(["(%s::uuid, %s::uuid)"] * len(items))
    params: list[Any] = []
    valid = []
    for item in items:
        try:
            params.extend([str(uuid.UUID(item.assignment_id)), str(item.worker_id)])
            valid.append(True)
        except ValueError:
            params.extend([str(uuid.UUID(int=0)), str(item.worker_id)])
            valid.append(False)
    assignment, job = Assignment._meta.db_table, Job._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {assignment} AS a SET heartbeat_at = %s, "  # noqa: S608 - table names only
            f"lease_expires_at = %s + j.lease_seconds * interval '1 second' "
            f"FROM {job} AS j, (VALUES {values}) AS v(id, worker_id) "
            "WHERE a.id = v.id AND a.worker_id = v.worker_id AND a.status = %s "
            "AND j.id = a.job_id RETURNING a.id",
            [now, now, *params, AssignmentStatus.ASSIGNED],
        )
        held = {str(row[0]) for row in cursor.fetchall()}
    return [
        ok and str(uuid.UUID(item.assignment_id)) in held
        for ok, item in zip(valid, items, strict=True)
    ]


# ---------------------------------------------------------------- results


def update_from_values(
    table: str,
    columns: list[tuple[str, str]],
    rows: list[tuple],
    sets: str,
    *,
    where: str = "",
    returning: str = "",
    leading_params: list[Any] = (),  # type: ignore[assignment]
) -> list[tuple]:
    """``UPDATE table AS t SET <sets> FROM unnest(<one array per column>) AS v(columns) WHERE
    t.id = v.id``.

    ``columns`` are (name, SQL type) pairs, the first being ``id``; ``sets`` and ``where`` (more
    conditions, ANDed) read ``v.<name>`` and ``t.<column>``; ``leading_params`` fill the
    placeholders of ``sets``; with ``returning``, the rows it returns.

    One array parameter per column, not one placeholder per value: the statement has a handful
    of placeholders whatever the number of rows (a ``VALUES`` list of a few thousand placeholders
    cost psycopg more CPU to parse and fill than PostgreSQL took to run it).
    """
    if not rows:
        return []
    arrays = [
        _column(values, kind)
        for values, (_, kind) in zip(zip(*rows, strict=True), columns, strict=True)
    ]
    unnest = ", ".join(f"%b::{kind}[]" for _, kind in columns)
    names = ", ".join(name for name, _ in columns)
    with bound_cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS t SET {sets} "  # noqa: S608 - table and column names only
            f"FROM unnest({unnest}) AS v({names}) WHERE t.id = v.id"
            + (f" AND {where}" if where else "")
            + (f" RETURNING {returning}" if returning else ""),
            [*leading_params, *arrays],
        )
        return cursor.fetchall() if returning else []


def _column(values: tuple, kind: str) -> list:
    """One column's values as an array parameter (psycopg needs one Python type per list: ids
    may come as ``UUID`` or ``str``)."""
    if kind == "uuid":
        return uuid_array(values)
    return list(values)
