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
    Offer,
    assignment_claim,
    replica_take,
    running_jobs_of,
)
from jobs.dispatch.queue_fill import queue_fill_request
from jobs.models import (
    COUNTED_REPLICA_STATUSES,
    Assignment,
    AssignmentStatus,
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


# ---------------------------------------------------------------- claims

# How many times a batched claim locks more tasks when its claimers' own held some of those it
# locked (each round one SKIP LOCKED select, one read of what they hold).
CLAIM_ROUNDS = 3

# What a claim reads of its workers (not their capabilities' JSON, decoded per row otherwise).
CLAIM_WORKER_FIELDS = (
    "id",
    "contributor_id",
    "is_banned",
    "consecutive_valid",
    "contributor__id",
    "contributor__is_banned",
    "contributor__pool_tenant_id",
)


def claims_batch(*, items: list[ClaimItem]) -> list[list[Offer]]:
    """Claim for many workers at once: one ``SKIP LOCKED`` select of as many dispatchable tasks
    as replicas are wanted, one read of what the claimers' contributors already hold of them
    (again, up to ``CLAIM_ROUNDS`` times, only if that left claimers short), one UPDATE of the
    tasks and one INSERT of the assignments (both with one array per column). Offers in input
    order.

    Replicas of a task go to distinct contributors (checked here, and by the partial unique
    index). Private-pool workers, rare, claim through :func:`assignment_claim`."""
    offers: list[list[Offer]] = [[] for _ in items]
    wanted = [(index, item) for index, item in enumerate(items) if item.count > 0]
    if not wanted:
        return offers
    workers = {
        w.pk: w
        for w in Worker.objects.select_related("contributor")
        .filter(pk__in={item.worker_id for _, item in wanted})
        .only(*CLAIM_WORKER_FIELDS)
    }
    public = []
    for index, item in wanted:
        worker = workers.get(item.worker_id)
        if worker is None or worker.is_banned or worker.contributor.is_banned:
            continue
        if worker.contributor.pool_tenant_id is not None:
            offers[index] = assignment_claim(worker_id=item.worker_id, count=item.count)
        else:
            public.append((index, item, worker))
    if not public:
        return offers
    contributors = [str(c) for c in {worker.contributor_id for _, _, worker in public}]
    now = timezone.now()
    rng = random.Random()  # noqa: S311 - spot-check sampling, not secrecy
    queue = deque((index, item.count, worker) for index, item, worker in public)
    assignments, changed, stopped, locked = [], [], [], []
    held: set[tuple[int, uuid.UUID]] = set()
    # Lock one task per replica still wanted: a task gives a claimer at most one replica, so
    # that is enough unless tasks the claimers' own contributors hold (a task waiting for its
    # second replica stays dispatchable) are skipped for them; then the next tasks, as many as
    # are still wanted. Locking more up front kept other processes' claims, running at the same
    # time, from tasks this flush did not take (a job start's first claims found none).
    for _ in range(CLAIM_ROUNDS):
        wanted_now = sum(need for _, need, _ in queue)
        if wanted_now <= 0:
            break
        tasks = list(
            Task.objects.unscoped()
            .filter(dispatchable=True, private_pool=False)
            .exclude(pk__in=locked)
            .order_by("-priority", "id")
            .select_for_update(skip_locked=True, of=("self",))
            .only(*CLAIM_FIELDS)[:wanted_now]
        )
        if not tasks:
            break
        locked += [t.pk for t in tasks]
        held |= _held(tasks, contributors)
        jobs = running_jobs_of(tasks)
        for task in tasks:
            job = jobs.get(task.job_id)
            if job is None:  # paused or cancelled between the flag and the lock
                stopped.append(task.pk)
                continue
            taken = False
            for _ in range(len(queue)):
                if task.active_replicas >= task.target_replicas or not queue:
                    break
                index, need, worker = queue.popleft()
                if (task.pk, worker.contributor_id) in held:
                    queue.append((index, need, worker))
                    continue
                held.add((task.pk, worker.contributor_id))
                assignment = replica_take(task=task, job=job, worker=worker, rng=rng, now=now)
                assignments.append(assignment)
                offers[index].append(Offer.for_assignment(assignment, task, job))
                taken = True
                if need > 1:
                    queue.append((index, need - 1, worker))
            if taken:
                changed.append(task)
            if not queue:
                break
        if len(tasks) < wanted_now:  # the queue is empty for now
            break
    if stopped:
        Task.objects.unscoped().filter(pk__in=stopped).update(dispatchable=False)
    update_from_values(
        Task._meta.db_table,
        [("id", "bigint"), ("active", "integer"), ("target", "integer")],
        [(t.pk, t.active_replicas, t.target_replicas) for t in changed],
        "active_replicas = v.active, target_replicas = v.target, "
        "dispatchable = v.active < v.target",
    )
    assignments_insert(assignments)
    # Lazy queue filling: the jobs whose low-water mark this flush took ask for their next fill.
    queue_fill_request(marks=[(t.pk, t.job_id) for t in changed if t.queue_low_mark])
    return offers


def _held(tasks: list[Task], contributors: list[str]) -> set[tuple[int, uuid.UUID]]:
    """Which of ``tasks`` the ``contributors`` hold a counted replica of, as (task, contributor)
    pairs (arrays, not an IN list of a placeholder per task)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT task_id, contributor_id FROM {Assignment._meta.db_table} "  # noqa: S608
            "WHERE task_id = ANY(%s::bigint[]) AND contributor_id = ANY(%s::uuid[]) "
            "AND status = ANY(%s::varchar[])",
            [
                [t.pk for t in tasks],
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
    unnest = ", ".join(f"%s::{kind}[]" for _, kind in columns)
    names = ", ".join(name for name, _ in columns)
    with connection.cursor() as cursor:
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
        return [None if value is None else str(value) for value in values]
    return list(values)


def assignments_insert(assignments: list[Assignment]) -> None:
    """Write new replicas (unsaved ``Assignment`` instances, as ``replica_take`` builds them)
    with one ``INSERT … SELECT … FROM unnest(…)``: ``bulk_create`` built a placeholder per field
    and row (12,000 for a flush of 768 claims), and building and parsing that statement was
    most of a claim flush's CPU."""
    if not assignments:
        return
    now = timezone.now()
    column = {f.name: f.column for f in Assignment._meta.concrete_fields}
    names = ("id", "tenant", "job", "task", "worker", "contributor", "lease_expires_at")
    blank = ("output_sha256", "error_code", "error_message")
    for assignment in assignments:
        assignment.assigned_at = now
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Assignment._meta.db_table} "  # noqa: S608 - names only
            f"({', '.join(column[name] for name in (*names, 'status', 'assigned_at', *blank))}) "
            f"SELECT v.*, %s, %s, {', '.join(["''"] * len(blank))} FROM unnest(%s::uuid[], "
            "%s::uuid[], %s::uuid[], %s::bigint[], %s::uuid[], %s::uuid[], %s::timestamptz[]) AS v",
            [
                AssignmentStatus.ASSIGNED,
                now,
                [str(a.pk) for a in assignments],
                [str(a.tenant_id) for a in assignments],
                [str(a.job_id) for a in assignments],
                [a.task_id for a in assignments],
                [str(a.worker_id) for a in assignments],
                [str(a.contributor_id) for a in assignments],
                [a.lease_expires_at for a in assignments],
            ],
        )
