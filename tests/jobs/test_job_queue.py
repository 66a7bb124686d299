"""Lazy queue filling: a start queues what the online workers' slots can start (the rest of the
high-water mark, what they can hold at once with their prefetch, follows once those are taken),
or ``DISPATCH_QUEUE_HIGH`` when that is set, in the request's transaction with a low-water mark
among them; the claim that takes the mark asks Celery for a fill (``job_queue_fill``), which tops
the queue up again. A fill respects a pause, never re-queues a task that is fully held, and a
job with more tasks than the high-water mark completes through the real claim path. Real
PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from jobs import dispatch, realtime, services
from jobs.dispatch import queue_fill
from jobs.dispatch.batch import ClaimItem, dispatch_batch
from jobs.models import Job, JobStatus, Task, TaskStatus, Worker
from jobs.services import lifecycle
from tenants.roles import Role
from tests.held_transaction import transaction_held
from tests.jobs.helpers import fc_job, new_worker, result_item

pytestmark = [pytest.mark.services]


@pytest.fixture(autouse=True)
def small_marks(settings):
    # a high-water mark of four tasks (the low-water mark is two), chunks of ten
    settings.DISPATCH_QUEUE_HIGH = 4
    settings.DISPATCH_QUEUE_CHUNK = 10


def _queued(job: Job) -> list[int]:
    return sorted(
        Task.objects.unscoped().filter(job=job, dispatchable=True).values_list("index", flat=True)
    )


def _marks(job: Job) -> list[int]:
    return sorted(
        Task.objects.unscoped()
        .filter(job=job, dispatchable=True, queue_low_mark=True)
        .values_list("index", flat=True)
    )


def _marks_from_workers(settings, monkeypatch, *, prefetch: int) -> None:  # noqa: ANN001
    """No configured mark, chunks of twenty, no floor: the marks follow the online workers."""
    settings.DISPATCH_QUEUE_HIGH = 0
    settings.DISPATCH_QUEUE_CHUNK = 20
    settings.DISPATCH_PREFETCH = prefetch
    monkeypatch.setattr(lifecycle, "QUEUE_HIGH_MIN", 1)


@pytest.mark.django_db
def test_a_start_queues_the_high_water_mark_with_a_low_water_mark_and_asks_no_fill(
    tenant, owner, kernels, django_capture_on_commit_callbacks
):
    # given a draft job of twelve tasks
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=12, start=False)
    # when it starts
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.job_start(job=job, actor_role=Role.OWNER)
    # then four tasks are queued, the second is the low-water mark (two are left after it),
    # and nothing but the wake and the event waits for the commit: no fill yet
    assert _queued(job) == [0, 1, 2, 3]
    assert _marks(job) == [1]
    assert len(callbacks) == 2
    # and a fill now finds the queue full: it marks nothing
    assert services.job_queue_fill(job_id=job.pk) == 0
    assert _queued(job) == [0, 1, 2, 3]
    assert _marks(job) == [1]


@pytest.mark.django_db
def test_a_small_job_is_queued_whole_without_a_mark(tenant, owner, kernels):
    # given a draft job of three tasks (under the high-water mark)
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=3, start=False)
    # when it starts, all three are queued and none is a mark (no fill will ever be needed)
    services.job_start(job=job, actor_role=Role.OWNER)
    assert _queued(job) == [0, 1, 2]
    assert _marks(job) == []


@pytest.mark.django_db
def test_a_claim_that_takes_the_mark_asks_for_a_fill_that_tops_the_queue_up(
    tenant, owner, kernels, django_capture_on_commit_callbacks
):
    # given a started job of twelve tasks (four queued, the second marked) and two workers
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=12)
    first, second = new_worker()[0], new_worker()[0]
    # when one batched claim takes one replica of the first task, the mark is not reached
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        dispatch_batch(claims=[ClaimItem(worker_id=first.worker_id, count=1)])
    assert callbacks == []
    assert _queued(job) == [0, 1, 2, 3]
    # when both workers take two replicas each: the first two tasks are held, the mark taken
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        dispatch_batch(
            claims=[
                ClaimItem(worker_id=first.worker_id, count=1),
                ClaimItem(worker_id=second.worker_id, count=2),
            ]
        )
    # then one fill ran after the commit (eager Celery) and topped the queue up to four, with a
    # new mark two from its end
    assert len(callbacks) == 2  # the fill request, then the fill's wake
    assert _queued(job) == [2, 3, 4, 5]
    assert _marks(job) == [3]


@pytest.mark.django_db
def test_a_process_asks_once_per_mark_and_a_fill_is_idempotent(tenant, owner, kernels):
    # given a started job whose mark was taken (its first two tasks fully held)
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=12)
    mark = Task.objects.unscoped().get(job=job, queue_low_mark=True)
    for _ in range(2):
        worker = new_worker()[0]
        assert len(dispatch.assignment_claim(worker_id=worker.worker_id, count=2)) == 2
    # when the process asks for the mark twice (its second replica was taken too)
    assert queue_fill.queue_fill_send(marks=[(mark.pk, job.pk)]) == [job.pk]
    assert queue_fill.queue_fill_send(marks=[(mark.pk, job.pk)]) == []
    # then one fill (eager Celery) topped the queue up, and another fill marks nothing
    assert _queued(job) == [2, 3, 4, 5]
    assert services.job_queue_fill(job_id=job.pk) == 0
    assert _queued(job) == [2, 3, 4, 5]


@pytest.mark.django_db
def test_a_full_queue_without_a_mark_gets_one_among_its_tasks(tenant, owner, kernels):
    # given a started job whose queue is full but holds no mark (re-queued tasks filled it)
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=12)
    Task.objects.unscoped().filter(job=job).update(queue_low_mark=False)
    # when a fill runs, it queues nothing and marks the task two from the queue's end
    assert services.job_queue_fill(job_id=job.pk) == 0
    assert _queued(job) == [0, 1, 2, 3]
    assert _marks(job) == [1]


@pytest.mark.django_db
def test_a_fill_stops_for_a_paused_job_and_skips_fully_held_tasks(tenant, owner, kernels):
    # given a started job whose queued tasks are fully held by two workers
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=8, start=False)
    services.job_start(job=job, actor_role=Role.OWNER)
    first, second = new_worker()[0], new_worker()[0]
    assert len(dispatch.assignment_claim(worker_id=first.worker_id, count=4)) == 4
    assert len(dispatch.assignment_claim(worker_id=second.worker_id, count=4)) == 4
    assert _queued(job) == []
    # when the job is paused, a fill queues nothing
    services.job_pause(job=job, actor_role=Role.OWNER)
    assert services.job_queue_fill(job_id=job.pk) == 0
    assert services.job_queue_fill_all() == 0
    assert _queued(job) == []
    # when it resumes: the released tasks come back first, up to the high-water mark, marked
    services.job_resume(job=job, actor_role=Role.OWNER)
    assert _queued(job) == [0, 1, 2, 3]
    assert _marks(job) == [1]
    # and a cancel stops the fill for good
    services.job_cancel(job=job, actor_role=Role.OWNER)
    assert services.job_queue_fill(job_id=job.pk) == 0
    assert _queued(job) == []


@pytest.mark.django_db
def test_the_periodic_fill_tops_up_every_running_job(tenant, owner, kernels):
    # given two started jobs whose queues were emptied without their marks being taken
    # (as if the fill requests were lost)
    jobs = [fc_job(tenant, owner, kernels["prime_count"], tasks=12) for _ in range(2)]
    for job in jobs:
        Task.objects.unscoped().filter(job=job).update(dispatchable=False, queue_low_mark=False)
    # when the safety net runs, each is topped up to four tasks with a mark
    assert services.job_queue_fill_all() == 8
    for job in jobs:
        assert _queued(job) == [0, 1, 2, 3]
        assert _marks(job) == [1]


@pytest.mark.django_db
def test_the_high_water_mark_follows_the_online_workers(
    tenant, owner, kernels, settings, monkeypatch, django_capture_on_commit_callbacks
):
    # given no configured mark, chunks of twenty, no floor, prefetch 2, and three online workers
    # of one slot each (room for nine replicas), plus a banned and an offline one
    _marks_from_workers(settings, monkeypatch, prefetch=2)
    for _ in range(3):
        new_worker(slots=1)
    banned, offline = new_worker(slots=4)[0], new_worker(slots=4)[0]
    Worker.objects.filter(pk=banned.worker_id).update(is_banned=True)
    dispatch.worker_disconnect(worker_id=offline.worker_id)
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=12, start=False)
    # when the job starts
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.job_start(job=job, actor_role=Role.OWNER)
    # then the request queued one task per quorum (two) of their three slots (concurrent claims
    # lock one task per quorum of the replicas they want) and one spare for the claim flush
    # they fill, marked the last before the spare, and asked no fill
    assert _queued(job) == [0, 1, 2]
    assert _marks(job) == [1]
    assert len(callbacks) == 2
    # and a fill tops it up to one task per quorum of the nine replicas they can hold with their
    # prefetch (five): two more, marked two from its end (the start's mark, not yet claimed,
    # stays)
    assert services.job_queue_fill(job_id=job.pk) == 2
    assert _queued(job) == [0, 1, 2, 3, 4]
    assert _marks(job) == [1, 2]


@pytest.mark.django_db
def test_a_start_queues_the_slots_worth_and_the_claim_taking_its_last_asks_for_the_rest(
    tenant, owner, kernels, settings, monkeypatch, django_capture_on_commit_callbacks
):
    # given no configured mark, prefetch 2, no floor, and four online workers of one slot each
    # (room for twelve replicas: six tasks of quorum 2)
    _marks_from_workers(settings, monkeypatch, prefetch=2)
    workers = [new_worker(slots=1)[0] for _ in range(4)]
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=12, start=False)
    # when the job starts, only what the four slots can start is queued: two tasks, the last
    # of them marked, and a spare for the claim flush they fill
    services.job_start(job=job, actor_role=Role.OWNER)
    assert _queued(job) == [0, 1, 2]
    assert _marks(job) == [1]
    # when the workers' first claims take one replica each (the start's wake)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        offers = dispatch_batch(
            claims=[ClaimItem(worker_id=w.worker_id, count=1) for w in workers]
        ).claims
    # then every worker got a task, and the claim that took the mark asked for the fill, which
    # ran (eager Celery) and queued the rest of the high-water mark, with a new mark
    assert sorted(o.task_index for offer in offers for o in offer) == [0, 0, 1, 1]
    assert len(callbacks) == 2  # the fill request, then the fill's wake
    assert _queued(job) == [2, 3, 4, 5, 6, 7]
    assert _marks(job) == [4]


@pytest.mark.django_db
def test_with_no_worker_online_the_high_water_mark_is_the_floor(
    tenant, owner, kernels, settings, monkeypatch
):
    # given no configured mark, chunks of ten, a floor of two and nobody online
    settings.DISPATCH_QUEUE_HIGH = 0
    monkeypatch.setattr(lifecycle, "QUEUE_HIGH_MIN", 2)
    # when a job of five tasks starts, two tasks are queued, the first marked
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=5)
    assert _queued(job) == [0, 1]
    assert _marks(job) == [0]


@pytest.mark.django_db(transaction=True)
def test_a_job_larger_than_the_high_water_mark_completes_through_claims_alone(
    tenant, owner, kernels
):
    # given a started job of twenty tasks (five times the high-water mark) and three workers
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=20)
    total = Task.objects.unscoped().filter(job=job).count()
    workers = [new_worker()[0] for _ in range(3)]
    # when they claim and return results through group-commit flushes, each result refilling
    # its worker, with no other fill than the ones the claims ask for (eager Celery) ...
    claimed = dispatch_batch(claims=[ClaimItem(worker_id=w.worker_id, count=1) for w in workers])
    held = {w.worker_id: offers for w, offers in zip(workers, claimed.claims, strict=True)}
    for _ in range(10 * total):
        pending = [(w, offer) for w in workers for offer in held[w.worker_id]]
        if not pending:
            break
        outcome = dispatch_batch(results=[result_item(w, offer, refill=1) for w, offer in pending])
        held = {w.worker_id: [] for w in workers}
        for (w, _), stored in zip(pending, outcome.results, strict=True):
            held[w.worker_id] += stored.offers
        if not any(held.values()):  # a worker left idle asks again, as a consumer does
            again = dispatch_batch(
                claims=[ClaimItem(worker_id=w.worker_id, count=1) for w in workers]
            )
            held = {w.worker_id: o for w, o in zip(workers, again.claims, strict=True)}
    # then every task was decided and the job completed
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert not Task.objects.unscoped().filter(job=job, status=TaskStatus.OPEN).exists()


async def _receive(layer, channel: str) -> dict | None:  # noqa: ANN001
    try:
        return await asyncio.wait_for(layer.receive(channel), 5)
    except TimeoutError:
        return None


@pytest.mark.django_db
def test_the_wake_is_the_first_thing_a_start_does_after_commit(
    tenant, owner, kernels, django_capture_on_commit_callbacks
):
    # given a channel in the dispatch group (a Daphne process's) and a draft job
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(realtime.DISPATCH_GROUP, channel)
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=8, start=False)
    try:
        # when it starts and only its first on-commit callback runs
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            services.job_start(job=job, actor_role=Role.OWNER)
        callbacks[0]()
        # then that was the wake: idle workers claim before the event is sent
        message = async_to_sync(_receive)(layer, channel)
        assert message == {"type": "dispatch.wake"}
    finally:
        async_to_sync(layer.group_discard)(realtime.DISPATCH_GROUP, channel)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("spares", [True, False])
def test_a_start_queues_a_spare_task_per_claim_flush_so_that_concurrent_flushes_all_find_one(
    tenant, owner, kernels, settings, monkeypatch, spares
):
    # given no configured mark, prefetch 2, no floor, and six online workers of one slot each
    # (three tasks of quorum 2), with the start's spare task per claim flush, or without it
    _marks_from_workers(settings, monkeypatch, prefetch=2)
    if not spares:
        monkeypatch.setattr(lifecycle, "_claim_flushes", lambda slots: 0)
    workers = [new_worker(slots=1)[0] for _ in range(6)]
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=12)
    assert _queued(job) == ([0, 1, 2, 3] if spares else [0, 1, 2])

    def claim(some: list) -> list[int]:
        offers = dispatch_batch(claims=[ClaimItem(worker_id=w.worker_id, count=1) for w in some])
        return [len(offer) for offer in offers.claims]

    # when one process's flush claims for three of them (two tasks: the second's other replica
    # stays locked until it commits), and another's claims for the other three meanwhile
    with transaction_held(lambda: claim(workers[:3])) as first:
        second = claim(workers[3:])
    # then with the spare every worker got a task; without it the second flush came up one short
    assert first == [1, 1, 1]
    assert second == ([1, 1, 1] if spares else [1, 1, 0])
