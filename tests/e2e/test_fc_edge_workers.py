"""Federated computing end to end with real processes: Daphne, Celery (with beat), PostgreSQL,
Redis and `ccgsc-worker` edge workers. Includes killing each moving part mid-job."""

from __future__ import annotations

import time

import pytest
from django.db.models import Count, Q

from jobs.models import Assignment, AssignmentStatus, Contributor, Job, Kernel, Task
from tests.e2e.conftest import wait_for_job
from tests.jobs.helpers import fc_job

pytestmark = [pytest.mark.services, pytest.mark.slow]

PI_1E10 = 455_052_511  # pi(10^10), a published value


def _prime_job(tenant, owner, *, tasks: int, chunk_size: int, lease_seconds: int = 60) -> Job:  # noqa: ANN001
    """A started prime count of ``tasks`` tasks from 1, quorum 2, with a random seed."""
    return fc_job(
        tenant,
        owner,
        Kernel.objects.get(name="prime_count", tenant=None),
        tasks=tasks,
        chunk_size=chunk_size,
        seed=None,
        lease_seconds=lease_seconds,
    )


def _assert_credited_exactly_once(job: Job) -> None:
    """Every real task has exactly `quorum` credited replicas, and counters agree."""
    per_task = (
        Task.objects.unscoped()
        .filter(job=job, known_answer_sha256="")
        .annotate(credited=Count("assignments", filter=Q(assignments__credited_at__isnull=False)))
        .values_list("credited", flat=True)
    )
    assert set(per_task) == {job.quorum}
    credited = Assignment.objects.unscoped().filter(job=job, credited_at__isnull=False)
    assert credited.count() == job.quorum * job.task_count
    assert credited.exclude(status=AssignmentStatus.VALID).count() == 0
    total_units = sum(Contributor.objects.values_list("validated_work_units", flat=True))
    task_units = sum(
        Task.objects.unscoped()
        .filter(job=job)
        .exclude(known_answer_sha256__gt="")
        .values_list("work_units", flat=True)
    )
    assert total_units == job.quorum * task_units


def test_two_edge_workers_count_primes_below_ten_million(fc_stack, tenant, owner):
    workers = [fc_stack.edge_worker(concurrency=2) for _ in range(2)]
    job = _prime_job(tenant, owner, tasks=20, chunk_size=500_000)
    job = wait_for_job(job.pk, timeout_s=120, stack=fc_stack)
    assert job.result["primes"] == 664_579
    _assert_credited_exactly_once(job)
    contributors = {w.token for w in workers}
    assert len(contributors) == 2
    assert Contributor.objects.filter(validated_replicas__gt=0).count() == 2


@pytest.mark.parametrize("victim", ["edge_worker", "daphne", "celery"])
def test_killing_a_part_mid_job_loses_nothing_and_credits_once(fc_stack, tenant, owner, victim):
    # given a job long enough to be interrupted (about 40 tasks of ~0.3 s each, quorum 2)
    first = fc_stack.edge_worker(concurrency=1)
    second = fc_stack.edge_worker(concurrency=1)
    job = _prime_job(tenant, owner, tasks=40, chunk_size=250_000_000, lease_seconds=5)
    deadline = time.monotonic() + 60
    while Job.objects.unscoped().get(pk=job.pk).tasks_validated < 8:
        assert time.monotonic() < deadline, fc_stack.logs()
        time.sleep(0.1)
    # when a part is killed without warning, then comes back
    if victim == "edge_worker":
        first.stop(kill=True)
        time.sleep(6)  # its lease (5 s) runs out; the sweeper re-queues its task
        first.start()
    elif victim == "daphne":
        fc_stack.daphne.stop(kill=True)
        time.sleep(3)
        fc_stack.daphne.start()
    else:
        fc_stack.celery.stop(kill=True)
        time.sleep(3)
        fc_stack.celery.start()
    # then the job finishes with the right answer and nothing is credited twice
    job = wait_for_job(job.pk, timeout_s=240, stack=fc_stack)
    assert job.result["primes"] == PI_1E10
    _assert_credited_exactly_once(job)
    assert second.process.poll() is None
