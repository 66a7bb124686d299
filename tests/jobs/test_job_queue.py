"""Starting a job queues its first chunk of tasks (what the online workers can hold at once) in
the request's transaction and the rest in chunks after commit (``job_queue_fill``): a fill respects a pause, never re-queues a task that is
fully held, and leaves the same queue the one-statement start left. Real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from jobs import dispatch, realtime, services
from jobs.models import Job, JobStatus, Task, Worker
from jobs.services import lifecycle
from tenants.roles import Role
from tests.jobs.helpers import new_worker

pytestmark = [pytest.mark.services]


@pytest.fixture(autouse=True)
def small_chunks(settings):
    settings.DISPATCH_QUEUE_CHUNK = 3


def _job(tenant, owner, kernel, *, tasks: int) -> Job:  # noqa: ANN001
    return services.job_create(
        tenant=tenant,
        actor=owner,
        actor_role=Role.OWNER,
        spec=services.JobSpec(
            name="queued",
            kernel=kernel,
            range_start=1,
            range_end=1 + tasks * 1000,
            chunk_size=1000,
            params={},
            quorum=2,
            seed=5,
        ),
        start=False,
    )


def _queued(job: Job) -> list[int]:
    return sorted(
        Task.objects.unscoped().filter(job=job, dispatchable=True).values_list("index", flat=True)
    )


@pytest.mark.django_db
def test_a_start_queues_one_chunk_now_and_the_fill_queues_the_rest(
    tenant, owner, kernels, django_capture_on_commit_callbacks
):
    # given a draft job of eight tasks (chunks of three)
    job = _job(tenant, owner, kernels["prime_count"], tasks=8)
    # when it starts
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.job_start(job=job, actor_role=Role.OWNER)
    # then the first three are queued now, and a fill waits for the commit (plus the wake)
    assert _queued(job) == [0, 1, 2]
    assert len(callbacks) == 3  # the event, the fill, the wake
    # when the fill runs, everything is queued, in chunks, and a second fill finds nothing
    assert services.job_queue_fill(job_id=job.pk) == 5
    assert _queued(job) == list(range(8))
    assert services.job_queue_fill(job_id=job.pk) == 0


@pytest.mark.django_db
def test_a_small_job_needs_no_fill(tenant, owner, kernels, django_capture_on_commit_callbacks):
    # given a draft job of two tasks
    job = _job(tenant, owner, kernels["prime_count"], tasks=2)
    # when it starts, both are queued and no fill is scheduled (the event and the wake only)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.job_start(job=job, actor_role=Role.OWNER)
    assert _queued(job) == [0, 1]
    assert len(callbacks) == 2


@pytest.mark.django_db
def test_a_fill_stops_for_a_paused_job_and_skips_fully_held_tasks(tenant, owner, kernels):
    # given a started job whose first chunk is fully held by two workers
    job = _job(tenant, owner, kernels["prime_count"], tasks=8)
    services.job_start(job=job, actor_role=Role.OWNER)
    first, second = new_worker()[0], new_worker()[0]
    assert len(dispatch.assignment_claim(worker_id=first.worker_id, count=3)) == 3
    assert len(dispatch.assignment_claim(worker_id=second.worker_id, count=3)) == 3
    assert _queued(job) == []
    # when the job is paused, a fill queues nothing
    services.job_pause(job=job, actor_role=Role.OWNER)
    assert services.job_queue_fill(job_id=job.pk) == 0
    assert _queued(job) == []
    # when it resumes: the released tasks come back first, the fill queues the rest, once each
    services.job_resume(job=job, actor_role=Role.OWNER)
    assert _queued(job) == [0, 1, 2]
    assert services.job_queue_fill(job_id=job.pk) == 5
    assert _queued(job) == list(range(8))
    # and the periodic safety net finds nothing left to do
    assert services.job_queue_fill_all() == 0
    assert Job.objects.unscoped().get(pk=job.pk).status == JobStatus.RUNNING


@pytest.mark.django_db
def test_a_start_queues_what_the_online_workers_can_hold_and_the_fill_the_rest(
    tenant, owner, kernels, settings, monkeypatch, django_capture_on_commit_callbacks
):
    # given chunks of twenty, no floor, prefetch 1, and three online workers of one slot each
    # (room for six replicas: three tasks at quorum 2), plus a banned and an offline one
    settings.DISPATCH_QUEUE_CHUNK = 20
    settings.DISPATCH_PREFETCH = 1
    monkeypatch.setattr(lifecycle, "FIRST_CHUNK_MIN", 1)
    for _ in range(3):
        new_worker(slots=1)
    banned, offline = new_worker(slots=4)[0], new_worker(slots=4)[0]
    Worker.objects.filter(pk=banned.worker_id).update(is_banned=True)
    dispatch.worker_disconnect(worker_id=offline.worker_id)
    job = _job(tenant, owner, kernels["prime_count"], tasks=12)
    # when the job starts
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.job_start(job=job, actor_role=Role.OWNER)
    # then the request queued one task per replica they can hold (concurrent claims lock one
    # task per replica they want), and a fill waits for the commit
    assert _queued(job) == list(range(6))
    assert len(callbacks) == 3  # the event, the fill, the wake
    # and the fill queues the other six, nothing twice
    assert services.job_queue_fill(job_id=job.pk) == 6
    assert _queued(job) == list(range(12))


@pytest.mark.django_db
def test_a_start_with_no_worker_online_queues_the_floor(
    tenant, owner, kernels, settings, monkeypatch, django_capture_on_commit_callbacks
):
    # given chunks of ten, a floor of two and nobody online
    settings.DISPATCH_QUEUE_CHUNK = 10
    monkeypatch.setattr(lifecycle, "FIRST_CHUNK_MIN", 2)
    job = _job(tenant, owner, kernels["prime_count"], tasks=5)
    # when the job starts, two tasks are queued now and the fill queues the rest
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.job_start(job=job, actor_role=Role.OWNER)
    assert _queued(job) == [0, 1]
    assert len(callbacks) == 3
    assert services.job_queue_fill(job_id=job.pk) == 3
    assert _queued(job) == list(range(5))


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
    job = _job(tenant, owner, kernels["prime_count"], tasks=8)
    try:
        # when it starts and only its first on-commit callback runs
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            services.job_start(job=job, actor_role=Role.OWNER)
        callbacks[0]()
        # then that was the wake: idle workers claim before the fill and the event are sent
        message = async_to_sync(_receive)(layer, channel)
        assert message == {"type": "dispatch.wake"}
    finally:
        async_to_sync(layer.group_discard)(realtime.DISPATCH_GROUP, channel)
