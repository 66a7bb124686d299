"""Per-job counters (``JobCounters`` and the deltas database triggers write) against real
PostgreSQL: they equal a recount after concurrent group-commit flushes and folds, through the
lifecycle and the lease sweep, roll back with their transaction, and the director's snapshot reads
them instead of counting."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from jobs import dispatch, selectors, services
from jobs.counter_models import JobCounterDelta
from jobs.dispatch import flusher
from jobs.dispatch.batch import ClaimItem, ErrorItem, HeartbeatItem
from jobs.models import Assignment, Job, JobCounters, Task, TaskStatus
from tenants.roles import Role
from tests.jobs.helpers import fc_job, new_worker, result_item

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def recount(job: Job) -> dict[str, int]:
    """The counters, recounted from the tasks and replicas themselves."""
    tasks = Task.objects.unscoped().filter(job=job, known_answer_sha256="")
    counted = tasks.aggregate(
        tasks_open=Count("id", filter=Q(status=TaskStatus.OPEN)),
        tasks_queued=Count("id", filter=Q(status=TaskStatus.OPEN, dispatchable=True)),
        tasks_validated=Count("id", filter=Q(status=TaskStatus.VALIDATED)),
        tasks_failed=Count("id", filter=Q(status=TaskStatus.FAILED)),
        tasks_cancelled=Count("id", filter=Q(status=TaskStatus.CANCELLED)),
    )
    replicas = Assignment.objects.unscoped().filter(job=job)
    names = {
        "running": "assigned",
        "returned": "returned",
        "valid": "valid",
        "invalid": "invalid",
        "error": "error",
        "expired": "expired",
        "cancelled": "cancelled",
        "late": "late",
    }
    counted |= replicas.aggregate(
        **{f"replicas_{name}": Count("id", filter=Q(status=s)) for name, s in names.items()}
    )
    return counted


def counters(job: Job) -> dict[str, int]:
    """What the director reads: the counters row plus the deltas not folded yet."""
    return selectors.job_counters(tenant=job.tenant, job=job)


def test_a_new_job_counts_its_tasks_and_a_start_queues_them(tenant, owner, kernels):
    # given a draft job of six tasks
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=6, start=False)
    # then its counters row exists and counts six open tasks, none queued
    assert counters(job) == recount(job)
    assert counters(job)["tasks_open"] == 6
    assert counters(job)["tasks_queued"] == 0
    # when it starts, all six are queued by the one statement that marks them
    services.job_start(job=job, actor_role=Role.OWNER)
    assert counters(job)["tasks_queued"] == 6
    assert counters(job) == recount(job)


def test_counters_equal_a_recount_after_concurrent_flushes(tenant, owner, kernels):
    # given 24 tasks (quorum 2, three replicas wanted so some results come late), six workers
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=24)
    Task.objects.unscoped().filter(job=job).update(target_replicas=3)
    sessions = [new_worker()[0] for _ in range(6)]
    claimed = [
        (s, o) for s in sessions for o in dispatch.assignment_claim(worker_id=s.worker_id, count=6)
    ]
    assert len(claimed) == 36
    # results (one in six a wrong answer), an error, heartbeats and new claims, in three parts
    items: list = []
    for n, (session, offer) in enumerate(claimed):
        if n == 7:
            items.append(
                ErrorItem(
                    worker_id=session.worker_id,
                    assignment_id=str(offer.assignment_id),
                    code="kernel_error",
                    message="trap",
                )
            )
        elif n % 6 == 5:
            items.append(result_item(session, offer, output=b"\x00" * 8))
        else:
            items.append(result_item(session, offer))
        items.append(
            HeartbeatItem(worker_id=session.worker_id, assignment_id=str(offer.assignment_id))
        )
    items += [ClaimItem(worker_id=s.worker_id, count=4) for s in sessions]
    barrier = threading.Barrier(3)

    def flush(part: list) -> list:
        try:
            barrier.wait()
            return flusher.flush_sync(part)[0]
        finally:
            connection.close()

    # when three flushers (three processes) write them at the same time
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(flush, [items[0::3], items[1::3], items[2::3]]))
    assert sum(len(part) for part in answers) == len(items)
    # then the counters equal a recount, before and after the deltas are folded
    assert counters(job) == recount(job)
    assert services.job_counters_fold() > 0
    assert not JobCounterDelta.objects.unscoped().filter(job=job).exists()
    assert counters(job) == recount(job)
    moved = counters(job)
    assert moved["tasks_validated"] > 0
    assert moved["replicas_valid"] > 0
    # The errored replica counts as an error unless its task validated first in another flush
    # (its replica is then cancelled): which happens first depends on the flushers' order.
    assert moved["replicas_error"] in (0, 1)
    assert moved["replicas_running"] > 0


def test_counters_follow_pause_resume_sweep_and_cancel(tenant, owner, kernels):
    # given a running job with replicas out
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=5)
    session = new_worker()[0]
    offers = dispatch.assignment_claim(worker_id=session.worker_id, count=3)
    assert counters(job)["replicas_running"] == 3
    # when it is paused and resumed, a lease expires and is swept, and it is cancelled
    services.job_pause(job=job, actor_role=Role.OWNER)
    assert counters(job) == recount(job)
    assert counters(job)["replicas_cancelled"] == 3
    services.job_resume(job=job, actor_role=Role.OWNER)
    assert counters(job)["tasks_queued"] == 5
    offers = dispatch.assignment_claim(worker_id=session.worker_id, count=2)
    Assignment.objects.unscoped().filter(pk=offers[0].assignment_id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert dispatch.lease_sweep() == 1
    assert counters(job) == recount(job)
    assert counters(job)["replicas_expired"] == 1
    services.job_cancel(job=job, actor_role=Role.OWNER)
    # then every step left counters equal to a recount
    assert counters(job) == recount(job)
    assert counters(job)["tasks_cancelled"] == 5
    assert counters(job)["tasks_open"] == 0


def test_a_rolled_back_transaction_takes_its_increments_with_it(tenant, owner, kernels):
    # given a running job
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=3)
    before = counters(job)
    session = new_worker()[0]

    def claim_then_fail() -> None:
        with transaction.atomic():
            assert dispatch.assignment_claim(worker_id=session.worker_id, count=3)
            raise RuntimeError("rolled back")

    # when a claim's transaction rolls back
    with pytest.raises(RuntimeError):
        claim_then_fail()
    # then the counters did not move
    assert counters(job) == before == recount(job)


def test_a_job_with_counters_can_still_be_deleted(tenant, owner, kernels):
    # given a job with replicas (counters row, tasks and replicas all present)
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=3)
    session = new_worker()[0]
    dispatch.assignment_claim(worker_id=session.worker_id, count=2)
    services.job_counters_fold()
    # when it is deleted (Django deletes the counters before the tasks and replicas)
    job.delete()
    # then nothing of it is left, the counters and their deltas included
    assert not JobCounterDelta.objects.unscoped().filter(job_id=job.pk).exists()
    assert not JobCounters.objects.unscoped().filter(job_id=job.pk).exists()
    assert not Task.objects.unscoped().filter(job_id=job.pk).exists()


def test_a_fold_beside_flushes_never_counts_a_delta_twice_or_loses_one(tenant, owner, kernels):
    # given a job whose replicas are being claimed while folds run, in three threads
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=30)
    sessions = [new_worker()[0] for _ in range(4)]
    barrier = threading.Barrier(3)

    def claims() -> None:
        try:
            barrier.wait()
            for session in sessions * 2:
                flusher.flush_sync([ClaimItem(worker_id=session.worker_id, count=3)])
        finally:
            connection.close()

    def folds() -> None:
        try:
            barrier.wait()
            for _ in range(8):
                services.job_counters_fold(batch=2)
        finally:
            connection.close()

    # when they run at the same time
    with ThreadPoolExecutor(3) as pool:
        for future in [pool.submit(claims), pool.submit(folds), pool.submit(folds)]:
            future.result()
    # then the totals are a recount, and stay so once everything is folded
    assert counters(job) == recount(job)
    assert counters(job)["replicas_running"] == 24
    services.job_counters_fold()
    assert counters(job) == recount(job)


def test_the_director_snapshot_reads_the_counters_in_a_fixed_number_of_queries(
    tenant, owner, kernels, django_assert_max_num_queries
):
    # given a job of 40 tasks with a few replicas out and one task validated
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=40)
    a, b = new_worker()[0], new_worker()[0]
    first = dispatch.assignment_claim(worker_id=a.worker_id, count=2)
    second = dispatch.assignment_claim(worker_id=b.worker_id, count=1)
    assert first[0].task_index == second[0].task_index
    flusher.flush_sync([result_item(a, first[0]), result_item(b, second[0])])
    # when the director reads its snapshot
    with django_assert_max_num_queries(8):
        state = selectors.job_state(tenant=tenant, job_id=job.pk)
    # then its numbers are the counters' (equal to a recount)
    again = recount(job)
    assert state["tasks"] == {
        "open": again["tasks_open"],
        "queued": again["tasks_queued"],
        "validated": 1,
        "failed": 0,
    }
    assert state["replicas"] == {
        "running": 1,
        "valid": 2,
        "invalid": 0,
        "errors": 0,
        "expired": 0,
    }
    assert [w["replicas"] for w in state["workers"]] == [1]
