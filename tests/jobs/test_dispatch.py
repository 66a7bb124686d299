"""The dispatch plane: claims, quorum validation, replicas, leases, late and duplicate results."""

from __future__ import annotations

import contextlib
import struct
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import dispatch, services
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
from tenants.roles import Role
from tests.jobs.helpers import fc_job, new_worker, run_offer, submit, work_until_done

pytestmark = pytest.mark.django_db


def _job(tenant, owner, kernel, **spec):  # noqa: ANN001, ANN003, ANN202
    """An FC job as this module sizes them unless told otherwise: 25,000 numbers a task, seed 7."""
    return fc_job(tenant, owner, kernel, **{"chunk_size": 25_000, "seed": 7, **spec})


def test_prime_job_completes_with_the_exact_count(
    tenant, owner, kernels, django_capture_on_commit_callbacks
):
    # given
    job = _job(tenant, owner, kernels["prime_count"], tasks=4)
    workers = [new_worker()[0] for _ in range(3)]
    # when
    with django_capture_on_commit_callbacks(execute=True):
        replicas = work_until_done(workers)
    # then
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert job.result["primes"] == 9592
    assert replicas == 4 * 2
    assert Assignment.objects.for_tenant(tenant).filter(status=AssignmentStatus.VALID).count() == 8
    assert sum(Worker.objects.values_list("validated_replicas", flat=True)) == 8
    assert sum(Contributor.objects.values_list("validated_work_units", flat=True)) == 2 * 100_000


def test_replicas_of_a_task_go_to_distinct_contributors(tenant, owner, kernels):
    _job(tenant, owner, kernels["prime_count"], tasks=1)
    session, _ = new_worker(slots=8)
    first = dispatch.assignment_claim(worker_id=session.worker_id, count=8)
    second = dispatch.assignment_claim(worker_id=session.worker_id, count=8)
    assert len(first) == 1
    assert second == []
    other, _ = new_worker()
    assert len(dispatch.assignment_claim(worker_id=other.worker_id, count=8)) == 1
    assert dispatch.assignment_claim(worker_id=new_worker()[0].worker_id, count=8) == []


def test_mismatch_adds_a_replica_and_the_liar_loses_trust(
    tenant, owner, kernels, django_capture_on_commit_callbacks
):
    job = _job(tenant, owner, kernels["prime_count"], tasks=1)
    honest, liar, tiebreaker = new_worker()[0], new_worker()[0], new_worker()[0]
    Worker.objects.filter(pk=liar.worker_id).update(consecutive_valid=5)
    (offer_h,) = dispatch.assignment_claim(worker_id=honest.worker_id, count=1)
    (offer_l,) = dispatch.assignment_claim(worker_id=liar.worker_id, count=1)
    submit(honest, offer_h)
    outcome = submit(liar, offer_l, output=struct.pack("<Q", 1234))
    assert outcome.wake is True
    task = Task.objects.for_tenant(tenant).get(job=job)
    assert (task.status, task.target_replicas) == (TaskStatus.OPEN, 3)
    with django_capture_on_commit_callbacks(execute=True):
        (offer_t,) = dispatch.assignment_claim(worker_id=tiebreaker.worker_id, count=1)
        submit(tiebreaker, offer_t)
    task.refresh_from_db()
    assert task.status == TaskStatus.VALIDATED
    assert struct.unpack("<Q", bytes(task.canonical_output)) == (2762,)
    statuses = dict(Assignment.objects.for_tenant(tenant).values_list("worker_id", "status"))
    assert statuses == {
        honest.worker_id: AssignmentStatus.VALID,
        liar.worker_id: AssignmentStatus.INVALID,
        tiebreaker.worker_id: AssignmentStatus.VALID,
    }
    liar_row = Worker.objects.get(pk=liar.worker_id)
    assert (liar_row.consecutive_valid, liar_row.invalid_replicas) == (0, 1)
    job.refresh_from_db()
    assert job.result["primes"] == 2762


def test_task_fails_when_replicas_never_agree(tenant, owner, kernels):
    job = _job(tenant, owner, kernels["prime_count"], tasks=1, quorum=2, max_replicas=3)
    for value in (1, 2, 3):
        session = new_worker()[0]
        (offer,) = dispatch.assignment_claim(worker_id=session.worker_id, count=1)
        submit(session, offer, output=struct.pack("<Q", value))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "no 2 of 3 replicas agreed" in job.status_reason


def test_duplicate_result_is_counted_once(tenant, owner, kernels):
    _job(tenant, owner, kernels["prime_count"], tasks=1, quorum=1)
    session = new_worker()[0]
    (offer,) = dispatch.assignment_claim(worker_id=session.worker_id, count=1)
    assert submit(session, offer).status == "accepted"
    assert submit(session, offer).status == "duplicate"
    worker = Worker.objects.get(pk=session.worker_id)
    assert worker.validated_replicas == 1


def test_result_with_wrong_hash_is_rejected_and_changes_nothing(tenant, owner, kernels):
    _job(tenant, owner, kernels["prime_count"], tasks=1)
    session = new_worker()[0]
    (offer,) = dispatch.assignment_claim(worker_id=session.worker_id, count=1)
    with pytest.raises(ValueError, match="sha256"):
        dispatch.result_submit(
            contributor_id=session.contributor_id,
            assignment_id=str(offer.assignment_id),
            output=b"12345678",
            sha256="0" * 64,
            elapsed_ms=1,
        )
    assert Assignment.objects.for_tenant(tenant).get().status == AssignmentStatus.ASSIGNED


def test_another_contributors_result_is_discarded(tenant, owner, kernels):
    _job(tenant, owner, kernels["prime_count"], tasks=1)
    session, stranger = new_worker()[0], new_worker()[0]
    (offer,) = dispatch.assignment_claim(worker_id=session.worker_id, count=1)
    assert submit(stranger, offer).status == "discarded"
    assert Assignment.objects.for_tenant(tenant).get().status == AssignmentStatus.ASSIGNED


def test_expired_lease_is_requeued_and_a_late_result_is_used_once(tenant, owner, kernels):
    job = _job(tenant, owner, kernels["prime_count"], tasks=1, quorum=2)
    slow, fast, third = new_worker()[0], new_worker()[0], new_worker()[0]
    (slow_offer,) = dispatch.assignment_claim(worker_id=slow.worker_id, count=1)
    (fast_offer,) = dispatch.assignment_claim(worker_id=fast.worker_id, count=1)
    Assignment.objects.for_tenant(tenant).filter(pk=slow_offer.assignment_id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    # when the sweeper runs
    assert dispatch.lease_sweep() == 1
    # then the task can go to someone else and the slow worker's trust resets
    assert Worker.objects.get(pk=slow.worker_id).expired_replicas == 1
    (third_offer,) = dispatch.assignment_claim(worker_id=third.worker_id, count=1)
    submit(fast, fast_offer)
    # the slow result arrives late: it is stored and used (the task still needs a second vote)
    assert submit(slow, slow_offer).status == "late"
    task = Task.objects.for_tenant(tenant).get(job=job)
    assert task.status == TaskStatus.VALIDATED
    # the third replica was cancelled: its result is discarded, never stored nor credited
    assert submit(third, third_offer).status == "discarded"
    third_row = Assignment.objects.for_tenant(tenant).get(pk=third_offer.assignment_id)
    assert (third_row.status, third_row.credited_at, third_row.output) == (
        AssignmentStatus.CANCELLED,
        None,
        None,
    )
    credited = Assignment.objects.for_tenant(tenant).filter(credited_at__isnull=False).count()
    assert credited == 2
    job.refresh_from_db()
    assert job.tasks_validated == 1


def test_error_frees_the_replica_for_another_worker(tenant, owner, kernels):
    _job(tenant, owner, kernels["prime_count"], tasks=1, quorum=1)
    broken, healthy = new_worker()[0], new_worker()[0]
    (offer,) = dispatch.assignment_claim(worker_id=broken.worker_id, count=1)
    assert dispatch.assignment_error(
        worker_id=broken.worker_id,
        assignment_id=str(offer.assignment_id),
        code="kernel_failed",
        message="trap",
    )
    assert Worker.objects.get(pk=broken.worker_id).errored_replicas == 1
    assert len(dispatch.assignment_claim(worker_id=healthy.worker_id, count=1)) == 1


def test_pause_stops_dispatch_and_resume_restarts_it(tenant, owner, kernels):
    job = _job(tenant, owner, kernels["prime_count"], tasks=4)
    services.job_pause(job=job, actor_role=Role.MEMBER)
    session = new_worker()[0]
    assert dispatch.assignment_claim(worker_id=session.worker_id, count=4) == []
    services.job_resume(job=job, actor_role=Role.MEMBER)
    assert len(dispatch.assignment_claim(worker_id=session.worker_id, count=4)) == 4


def test_cancel_stops_everything(tenant, owner, kernels):
    job = _job(tenant, owner, kernels["prime_count"], tasks=4)
    session = new_worker()[0]
    offers = dispatch.assignment_claim(worker_id=session.worker_id, count=2)
    services.job_cancel(job=job, actor_role=Role.MEMBER)
    assert dispatch.assignment_claim(worker_id=new_worker()[0].worker_id, count=4) == []
    assert submit(session, offers[0]).status == "discarded"
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert Task.objects.for_tenant(tenant).filter(job=job, status=TaskStatus.CANCELLED).count() == 4


def test_known_answer_tasks_catch_a_cheater(tenant, owner, kernels):
    # given a job large enough to carry known-answer tasks
    job = _job(tenant, owner, kernels["prime_count"], tasks=100, chunk_size=10_000, quorum=1)
    known = Task.objects.for_tenant(tenant).filter(job=job).exclude(known_answer_sha256="")
    assert known.count() == 2
    assert job.task_count == 100
    cheater = new_worker()[0]
    # when a cheater answers every task with zeros
    for _ in range(30):
        for offer in dispatch.assignment_claim(worker_id=cheater.worker_id, count=4):
            submit(cheater, offer, output=b"\0" * 8)
    # then the known-answer tasks it met failed it and reset its trust
    met = Assignment.objects.for_tenant(tenant).filter(worker_id=cheater.worker_id, task__in=known)
    assert met.count() == 2
    assert set(met.values_list("status", flat=True)) == {AssignmentStatus.INVALID}
    assert not known.filter(status=TaskStatus.VALIDATED).exists()
    worker = Worker.objects.get(pk=cheater.worker_id)
    assert worker.invalid_replicas == 2


def test_adaptive_replication_trusts_proven_workers_but_still_spot_checks(tenant, owner, kernels):
    job = _job(
        tenant,
        owner,
        kernels["montecarlo_pi"],
        range_start=0,
        tasks=400,
        chunk_size=1000,
        quorum=2,
        adaptive_replication=True,
    )
    trusted = new_worker()[0]
    Worker.objects.filter(pk=trusted.worker_id).update(consecutive_valid=1000)
    offers = dispatch.assignment_claim(worker_id=trusted.worker_id, count=64)
    singles = (
        Task.objects.for_tenant(tenant)
        .filter(job=job, target_replicas=1, known_answer_sha256="")
        .count()
    )
    # floor 0.1: about 90 % of tasks are trusted alone, never all of them
    assert 40 <= singles < 64
    assert len(offers) == 64


def test_montecarlo_estimate_is_the_same_whichever_workers_run_it(tenant, owner, kernels):
    results = []
    for n_workers in (2, 5):
        job = _job(
            tenant,
            owner,
            kernels["montecarlo_pi"],
            range_start=0,
            tasks=10,
            chunk_size=20_000,
            seed=42,
            name=f"mc-{n_workers}",
        )
        work_until_done([new_worker()[0] for _ in range(n_workers)])
        job.refresh_from_db()
        services.job_reduce(job_id=job.pk)
        job.refresh_from_db()
        results.append((job.result["inside"], job.result["samples"], job.result_sha256))
    assert results[0] == results[1]
    assert results[0][1] == 200_000
    assert abs(4 * results[0][0] / results[0][1] - 3.14159) < 0.02


def test_run_offer_matches_the_python_sieve(kernels, tenant, owner):
    _job(tenant, owner, kernels["prime_count"], tasks=1, chunk_size=100, quorum=1)
    session = new_worker()[0]
    (offer,) = dispatch.assignment_claim(worker_id=session.worker_id, count=1)
    assert struct.unpack("<Q", run_offer(offer)) == (25,)


def test_job_reduce_is_idempotent(tenant, owner, kernels, django_capture_on_commit_callbacks):
    job = _job(tenant, owner, kernels["prime_count"], tasks=2, quorum=1)
    with django_capture_on_commit_callbacks(execute=True):
        work_until_done([new_worker()[0]])
    job.refresh_from_db()
    first = (job.status, job.result, job.completed_at)
    services.job_reduce(job_id=job.pk)
    job.refresh_from_db()
    assert (job.status, job.result, job.completed_at) == first
    assert Job.objects.for_tenant(tenant).get().result["primes"] == 5133


def test_run_periodic_once_sweeps_expired_leases(tenant, owner, kernels):
    from io import StringIO

    from django.core.management import call_command

    _job(tenant, owner, kernels["prime_count"], tasks=1)
    session = new_worker()[0]
    (offer,) = dispatch.assignment_claim(worker_id=session.worker_id, count=1)
    Assignment.objects.for_tenant(tenant).filter(pk=offer.assignment_id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    err = StringIO()
    call_command("run_periodic", "--once", stdout=StringIO(), stderr=err)
    assert err.getvalue() == ""
    assert Assignment.objects.for_tenant(tenant).get().status == AssignmentStatus.EXPIRED


def test_outputs_of_the_wrong_size_are_refused(tenant, owner, kernels):
    _job(tenant, owner, kernels["prime_count"], tasks=1)
    session = new_worker()[0]
    (offer,) = dispatch.assignment_claim(worker_id=session.worker_id, count=1)
    with pytest.raises(ValueError, match="outputs 8 bytes, got 16"):
        submit(session, offer, output=b"\1" * 16)
    assert Assignment.objects.for_tenant(tenant).get().status == AssignmentStatus.ASSIGNED


def test_colluders_whose_results_cannot_be_reduced_fail_the_job_instead_of_hanging(
    tenant, owner, kernels
):
    # two colluders agree on outputs whose sum overflows a u64
    job = _job(
        tenant,
        owner,
        kernels["montecarlo_pi"],
        range_start=0,
        tasks=2,
        chunk_size=1000,
        quorum=2,
    )
    colluders = [new_worker()[0], new_worker()[0]]
    for session in colluders:
        for offer in dispatch.assignment_claim(worker_id=session.worker_id, count=4):
            submit(session, offer, output=b"\xff" * 16)
    services.job_reduce(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "could not be reduced" in job.status_reason


def test_a_disagreement_wakes_idle_workers(
    tenant, owner, kernels, django_capture_on_commit_callbacks
):
    import asyncio

    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from jobs import realtime

    _job(tenant, owner, kernels["prime_count"], tasks=1)
    first, second = new_worker()[0], new_worker()[0]
    (a,) = dispatch.assignment_claim(worker_id=first.worker_id, count=1)
    (b,) = dispatch.assignment_claim(worker_id=second.worker_id, count=1)
    submit(first, a, output=struct.pack("<Q", 1))
    # an idle worker's channel joins the dispatch group now, after the job's own start-up wake
    layer = get_channel_layer()
    idle = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(realtime.DISPATCH_GROUP, idle)

    async def drain() -> list[dict]:
        messages = []
        with contextlib.suppress(TimeoutError):
            while True:
                messages.append(await asyncio.wait_for(layer.receive(idle), timeout=0.5))
        return messages

    with django_capture_on_commit_callbacks(execute=True):
        submit(second, b, output=struct.pack("<Q", 2))
    assert {"type": "dispatch.wake", "tasks": 1} in async_to_sync(drain)()
    async_to_sync(layer.group_discard)(realtime.DISPATCH_GROUP, idle)
