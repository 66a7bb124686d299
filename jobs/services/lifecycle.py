"""Job lifecycle: start, pause, resume, cancel, the controls that apply them, and job events.

Every transition takes the job's row lock. Pausing and cancelling both stop the replicas that are
running and tell their workers (``worker.cancel``, after commit): a paused job's tasks go back to
the queue and are handed out again on resume.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Count, F, Sum, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from jobs import realtime
from jobs.metering import WorkQuote, WorkRefused, metering
from jobs.models import (
    Assignment,
    AssignmentStatus,
    Job,
    JobEvent,
    JobStatus,
    Task,
    TaskStatus,
    Worker,
)
from jobs.selectors import job_get
from jobs.services.fl_admission import fl_job_admit
from tenants.models import Tenant
from tenants.roles import Action
from tenants.services import require_role
from tenants.tiers import JobKind


def job_event(*, job: Job, kind: str, message: str) -> JobEvent:
    """Record a line of the job's history and push it to the director after commit."""
    event = JobEvent.objects.create(
        tenant_id=job.tenant_id, job=job, kind=kind, message=message[:300]
    )
    realtime.broadcast_on_commit(
        realtime.job_group(job.id),
        {
            "type": "job.event",
            "kind": kind,
            "message": event.message,
            "at": event.created_at.isoformat(),
        },
    )
    return event


def _lock(job: Job) -> Job:
    # ``job`` was loaded through a tenant-scoped selector; re-read it under a row lock.
    return Job.objects.unscoped().select_for_update().get(pk=job.pk, tenant_id=job.tenant_id)


def job_admit(*, job: Job) -> None:
    """Ask the money plane whether the job's next task can be paid for; refusals become
    ``ValidationError`` with the money plane's message."""
    if job.kind in (JobKind.FL, JobKind.ANALYTICS):  # analytics rides the FL rounds
        fl_job_admit(job=job)
        return
    units = max(
        1, round(min(job.chunk_size, job.range_end - job.range_start) * job.kernel.work_unit_scale)
    )
    try:
        metering().admit(tenant=job.tenant, quote=WorkQuote(work_units=units))
    except WorkRefused as exc:
        raise ValidationError(str(exc)) from exc


def _unqueue(job: Job) -> None:
    """A job that stopped running: none of its tasks may be handed out."""
    Task.objects.unscoped().filter(job=job, dispatchable=True).update(dispatchable=False)


def _queue_chunk(
    job_id: Any, limit: int | None = None, *, mark_offset: int | None = None
) -> tuple[int, int]:
    """Mark the next ``limit`` (default ``DISPATCH_QUEUE_CHUNK``) of a job's open tasks that may
    be handed out but are not queued (lowest ids first, the claim order); returns (tasks marked,
    replicas they want). With ``mark_offset``, the task at that position among them (0 first)
    becomes the job's low-water mark (``Task.queue_low_mark``) if the chunk is full (a shorter
    one queued the last of the job's tasks: no fill is needed after it); the others lose any
    old mark.
    One statement; the caller holds the job's row lock or its key-share lock and has checked
    that the job runs. Idempotent: a task already queued or fully held is not taken."""
    task = Task._meta.db_table
    limit = _chunk() if limit is None else limit
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH picked AS (SELECT id FROM {task} WHERE job_id = %s AND status = %s"  # noqa: S608
            " AND NOT dispatchable AND active_replicas < target_replicas ORDER BY id LIMIT %s)"
            f" UPDATE {task} SET dispatchable = TRUE, queue_low_mark = (id IS NOT DISTINCT FROM"
            " (SELECT id FROM picked ORDER BY id LIMIT 1 OFFSET %s)"
            " AND (SELECT count(*) FROM picked) = %s)"
            " WHERE id IN (SELECT id FROM picked) RETURNING target_replicas - active_replicas",
            [
                Job._meta.pk.get_db_prep_value(job_id, connection),
                TaskStatus.OPEN,
                limit,
                # Past the end (no mark) when none is wanted.
                limit if mark_offset is None else mark_offset,
                limit,
            ],
        )
        wanted = [row[0] for row in cursor.fetchall()]
    return len(wanted), sum(wanted)


def _queue_mark(job_id: Any, *, offset: int) -> None:
    """Make the job's queued task at ``offset`` (0 first, in claim order) its low-water mark:
    for a top-up whose mark falls among tasks that were already queued. One statement, along
    the job's open tasks in id order (its tasks share its priority, so that is claim order);
    the caller holds the job's key-share lock."""
    task = Task._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {task} SET queue_low_mark = TRUE WHERE id = (SELECT id FROM {task}"  # noqa: S608
            " WHERE job_id = %s AND status = %s AND dispatchable ORDER BY id LIMIT 1 OFFSET %s)"
            " AND NOT queue_low_mark",  # the periodic fill of a full queue rewrites nothing
            [Job._meta.pk.get_db_prep_value(job_id, connection), TaskStatus.OPEN, max(0, offset)],
        )


def _queued_count(job_id: Any, *, high: int) -> int:
    """How many of a job's tasks are queued now, up to ``high``: the queued ones among its first
    ``high`` open tasks that want replicas, in claim order. A job's queued tasks are the first of
    those (fills queue in claim order; a task whose replica is released wants one again and is
    queued again), so this reads about ``high`` entries of the (job, status, id) index, not
    every task of the job as a count of its queued tasks did."""
    task = Task._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE dispatchable) FROM (SELECT dispatchable"  # noqa: S608
            f" FROM {task} WHERE job_id = %s AND status = %s AND active_replicas < target_replicas"
            " ORDER BY id LIMIT %s) AS head",
            [Job._meta.pk.get_db_prep_value(job_id, connection), TaskStatus.OPEN, high],
        )
        return cursor.fetchone()[0]


def _chunk() -> int:
    return int(getattr(settings, "DISPATCH_QUEUE_CHUNK", 5000))


# Below this, a high-water mark is not worth a Celery round trip: small jobs queue whole.
QUEUE_HIGH_MIN = 64


def _online_slots() -> tuple[int, int]:
    """The workers online now: their slots, and how many they are."""
    online = Worker.objects.filter(is_online=True, is_banned=False).aggregate(
        slots=Sum("slots"), workers=Count("id")
    )
    return online["slots"] or 0, online["workers"]


def _queue_capacity(online: tuple[int, int] | None = None) -> int:
    """How many replicas the workers online now (``_online_slots``, read when not given) can
    hold at once: their slots plus the prefetch each."""
    slots, workers = _online_slots() if online is None else online
    return slots + settings.DISPATCH_PREFETCH * workers


def _queue_high(*, quorum: int, capacity: int | None = None) -> int:
    """The high-water mark: how many of a running job's tasks every fill keeps queued (a start
    queues its online slots' worth first: ``_queue``). ``DISPATCH_QUEUE_HIGH`` when set (above
    0); otherwise one task per ``quorum`` replicas of the online workers' ``capacity``
    (``_queue_capacity``, read when not given), at least ``QUEUE_HIGH_MIN``. At most
    ``DISPATCH_QUEUE_CHUNK`` either way. A batched claim locks one task per ``quorum`` replicas it wants and hands a task's replicas to
    as many of its claimers (``jobs.dispatch.batch_leases``), so that many tasks serve every
    process's first claims without one flush locking what the others' claimers need."""
    configured = int(getattr(settings, "DISPATCH_QUEUE_HIGH", 0))
    if configured > 0:
        return min(_chunk(), configured)
    if capacity is None:
        capacity = _queue_capacity()
    return min(_chunk(), max(QUEUE_HIGH_MIN, -(-capacity // max(1, quorum))))


def _queue_low(high: int) -> int:
    """The low-water mark: a claim that leaves about this many of a job's tasks queued asks for
    the next fill. Half the high mark: the other half is the time the fill has to arrive."""
    return high // 2


def _claim_flushes(slots: int) -> int:
    """How many claim flushes the first claims of ``slots`` free slots fill.

    A flush locks whole tasks (one per quorum of the replicas it wants), and its last task's
    leftover replicas stay locked until it commits: a flush of another process that runs
    meanwhile can find the rest of the queue taken, up to one task short per flush. A start
    queues that many tasks more than its slots need (``_queue``); without them a socket was
    left without a task until the fill came, a third of a second later on a slow machine."""
    return -(-slots // max(1, int(settings.DISPATCH_FLUSH_ITEMS)))


def _queue(job: Job) -> None:
    """A job that starts (or resumes) running: what the online workers' free slots can start
    is queued in the caller's transaction, and the rest of the high-water mark
    (``_queue_high``) once those are taken.

    Every task queued here is a row written before the request commits and the wake leaves.
    The wake's first claims take one replica per free slot (prefetch claims follow once their
    ``assign``s went out), so the start queues one task per ``quorum`` of the online slots (at
    least ``QUEUE_HIGH_MIN``) and one spare per claim flush they fill (``_claim_flushes``), and
    makes the last task before the spares the low-water mark: the claim that takes it asks
    Celery for the fill up to the high-water mark (``job_queue_fill``), which the prefetch
    claims then find. Starting a job of quorum 2 with 1,000 single-slot workers online
    (prefetch 2) writes 500 rows before the wake instead of 1,500, a third of the request's
    queue time (``docs/benchmarks.md``). With ``DISPATCH_QUEUE_HIGH`` set, or when the slots'
    worth reaches the high-water mark, the start queues the high-water mark with its low-water
    mark among them, as every fill does."""
    if int(getattr(settings, "DISPATCH_QUEUE_HIGH", 0)) > 0:
        high = _queue_high(quorum=job.quorum)
        _queue_chunk(job.pk, high, mark_offset=high - _queue_low(high) - 1)
        return
    online = _online_slots()
    high = _queue_high(quorum=job.quorum, capacity=_queue_capacity(online))
    spare = _claim_flushes(online[0])
    first = max(QUEUE_HIGH_MIN, -(-online[0] // max(1, job.quorum)) + spare)
    if first < high:
        _queue_chunk(job.pk, first, mark_offset=first - spare - 1)
    else:
        _queue_chunk(job.pk, high, mark_offset=high - _queue_low(high) - 1)


def _queue_top_up(job_id: Any, *, high: int) -> tuple[int, int]:
    """Queue a running job's tasks up to ``high`` and leave a low-water mark among its queued
    tasks while it has more to queue; returns (tasks marked, replicas they want). The caller
    holds the job's key-share lock and has checked that it runs."""
    low = _queue_low(high)
    queued = _queued_count(job_id, high=high)
    want = high - queued
    # Where the mark goes in the job's queue (claim order): ``low`` tasks after it.
    mark_at = high - low - 1 if want > 0 else queued - low - 1
    count, replicas = 0, 0
    if want > 0:
        new_mark = mark_at - queued if mark_at >= queued else None
        count, replicas = _queue_chunk(job_id, want, mark_offset=new_mark)
        if count < want:
            return count, replicas  # nothing left to queue: no more fills needed
        if new_mark is not None:
            return count, replicas
    # The mark falls among tasks already queued (re-queued ones filled it up): put it there.
    _queue_mark(job_id, offset=mark_at)
    return count, replicas


def job_queue_fill(*, job_id: Any, capacity: int | None = None) -> int:
    """Top up a running job's queue to the high-water mark (``_queue_high``; ``capacity`` is
    the online workers' when the caller read it); returns how many tasks it marked.

    Asked for by the claim that takes the job's low-water mark (``jobs.dispatch.queue_fill``)
    and by the periodic safety net. Takes the job's key-share lock, which waits for a pause or
    cancel (they lock the row for update) but not for flushes updating its counters; a job
    that no longer runs is not filled. Idempotent: a second fill finds the queue full."""
    lock = " FOR KEY SHARE" if connection.vendor == "postgresql" else ""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"SELECT status, quorum FROM {Job._meta.db_table} WHERE id = %s{lock}",  # noqa: S608
            [Job._meta.pk.get_db_prep_value(job_id, connection)],
        )
        row = cursor.fetchone()
        if row is None or row[0] != JobStatus.RUNNING:
            return 0
        high = _queue_high(quorum=row[1], capacity=capacity)
        count, replicas = _queue_top_up(job_id, high=high)
        if replicas:
            realtime.wake_dispatch_on_commit(tasks=replicas)
    return count


def job_queue_fill_all() -> int:
    """Top up every running FC job's queue (the periodic safety net for a lost fill request)."""
    running = Job.objects.unscoped().filter(status=JobStatus.RUNNING, kind=JobKind.FC)
    capacity = _queue_capacity()
    return sum(
        job_queue_fill(job_id=job_id, capacity=capacity)
        for job_id in running.values_list("id", flat=True)
    )


def replicas_cancel_running(
    *, job: Job, reason: str, task: Task | None = None, release: bool = False
) -> int:
    """Mark the job's live replicas cancelled and tell their workers (after commit).

    With ``release``, each cancelled replica also stops counting against its task
    (``active_replicas``), so the task is handed out again when the job runs: a pause needs that,
    while a cancelled or finished job's tasks are closed anyway. Returns how many were cancelled.
    """
    live = Assignment.objects.unscoped().filter(job=job, status=AssignmentStatus.ASSIGNED)
    if task is not None:
        live = live.filter(task=task)
    # Lock the live replicas first so the ones released from their tasks are exactly the ones
    # cancelled. A replica whose result is being stored right now holds its row lock: skip it
    # (its result is already here; waiting for it while holding the task's lock would deadlock).
    # A heartbeat holds the lock for one statement; a replica skipped for that runs on until its
    # result (stored as late if the task closed) or its lease expiry.
    rows = list(
        live.select_for_update(skip_locked=True, of=("self",)).values_list(
            "id", "task_id", "worker__channel_name"
        )
    )
    for assignment_id, _, channel in rows:
        realtime.send_on_commit(
            channel, {"type": "worker.cancel", "assignment": str(assignment_id), "reason": reason}
        )
    live.filter(pk__in=[row[0] for row in rows]).update(status=AssignmentStatus.CANCELLED)
    if release:
        for task_id, count in Counter(row[1] for row in rows).items():
            Task.objects.unscoped().filter(pk=task_id).update(
                active_replicas=Greatest(F("active_replicas") - count, Value(0))
            )
    return len(rows)


@transaction.atomic
def job_start(*, job: Job, actor_role: str) -> Job:
    """Start a draft job: its tasks become dispatchable and idle workers are woken."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    job = _lock(job)
    if job.status != JobStatus.DRAFT:
        raise ValidationError(f"A {job.status} job cannot be started.")
    job_admit(job=job)
    job.status = JobStatus.RUNNING
    job.started_at = timezone.now()
    job.save(update_fields=["status", "started_at"])
    # On-commit callbacks run in the order they were registered: the wake first, so idle
    # workers claim before the director is told.
    realtime.wake_dispatch_on_commit()
    _queue(job)
    job_event(job=job, kind="started", message="Job started")
    return job


def _pause_locked(job: Job, *, reason: str) -> None:
    """Pause a running job whose row lock the caller holds."""
    job.status = JobStatus.PAUSED
    job.status_reason = reason[:300]
    job.save(update_fields=["status", "status_reason"])
    replicas_cancel_running(job=job, reason="job_paused", release=True)
    _unqueue(job)
    job_event(job=job, kind="paused", message=reason)


@transaction.atomic
def job_pause(*, job: Job, actor_role: str, reason: str = "Paused by the tenant") -> Job:
    """Stop handing out tasks and stop the replicas running; resume hands their tasks out again."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    job = _lock(job)
    if job.status != JobStatus.RUNNING:
        raise ValidationError(f"A {job.status} job cannot be paused.")
    _pause_locked(job, reason=reason)
    return job


def job_pause_system(*, job_id: Any, reason: str) -> bool:
    """Pause a running job on the platform's own behalf (e.g. the money plane when a balance runs
    out). No role is involved: this is a system action, audited as a job event. Returns whether
    the job was running and is now paused. Call it after the caller's transaction commits: it
    takes the job's row lock in a transaction of its own."""
    with transaction.atomic():
        job = Job.objects.unscoped().select_for_update().filter(pk=job_id).first()
        if job is None or job.status != JobStatus.RUNNING:
            return False
        _pause_locked(job, reason=reason)
        return True


@transaction.atomic
def job_resume(*, job: Job, actor_role: str) -> Job:
    """Resume a paused job."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    job = _lock(job)
    if job.status != JobStatus.PAUSED:
        raise ValidationError(f"A {job.status} job cannot be resumed.")
    job_admit(job=job)
    job.status = JobStatus.RUNNING
    job.status_reason = ""
    job.save(update_fields=["status", "status_reason"])
    realtime.wake_dispatch_on_commit()  # first after commit, as for a start
    _queue(job)
    job_event(job=job, kind="resumed", message="Job resumed")
    return job


@transaction.atomic
def job_cancel(*, job: Job, actor_role: str, reason: str = "Cancelled by the tenant") -> Job:
    """Cancel a job: open tasks are cancelled and running replicas told to stop."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    job = _lock(job)
    if job.is_finished:
        raise ValidationError(f"A {job.status} job cannot be cancelled.")
    job.status = JobStatus.CANCELLED
    job.status_reason = reason[:300]
    job.completed_at = timezone.now()
    job.save(update_fields=["status", "status_reason", "completed_at"])
    Task.objects.unscoped().filter(job=job, status=TaskStatus.OPEN).update(
        status=TaskStatus.CANCELLED, dispatchable=False
    )
    replicas_cancel_running(job=job, reason="job_cancelled")
    job_event(job=job, kind="cancelled", message=reason)
    return job


def job_control(*, tenant: Tenant, job_id: Any, role: str, action: str) -> Job:
    """Apply a director or API control (start, pause, resume, cancel) to a tenant's job."""
    job = job_get(tenant=tenant, job_id=job_id)  # first: another tenant's job is a 404, always
    controls = {"start": job_start, "pause": job_pause, "resume": job_resume, "cancel": job_cancel}
    if action not in controls:
        raise ValidationError(f"Unknown action {action!r}; use one of {sorted(controls)}.")
    return controls[action](job=job, actor_role=role)
