"""Group commit against real PostgreSQL: batches validate exactly once, answer only after commit,
fall back item by item, never hand one contributor two replicas of a task, and bill one ledger
entry per batch per tenant with books that still balance."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, transaction

from billing import ledger
from billing.models import EntryKind, JournalEntry, UsageRecord, UsageStatus
from billing.topups import topup_fulfil
from jobs import dispatch
from jobs.dispatch import batch, flusher, idle
from jobs.dispatch.batch import ClaimItem, HeartbeatItem, ResultItem, dispatch_batch
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
from tenants.models import Tenant
from tenants.tiers import Tier
from tests.jobs.helpers import fc_job, new_worker, result_item, run_offer

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

TASK_UNITS = 100_000_000  # 1 cent of FC work on FL Core


def _claim_all(sessions, count: int = 8) -> list[tuple]:  # noqa: ANN001
    """Each worker claims what it can; returns (session, offer) pairs."""
    return [
        (session, offer)
        for session in sessions
        for offer in dispatch.assignment_claim(worker_id=session.worker_id, count=count)
    ]


def test_one_batch_validates_every_task_once_and_answers_in_order(tenant, owner, kernels):
    # given four tasks, quorum 2, two workers holding a replica of each
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=4)
    sessions = [new_worker()[0] for _ in range(2)]
    claimed = _claim_all(sessions)
    assert len(claimed) == 8
    items = [result_item(s, o) for s, o in claimed]
    # when all eight results and a replay of the first arrive in one flush
    outcome = dispatch_batch(results=[*items, items[0]])
    # then
    assert [o.status for o in outcome.results] == ["accepted"] * 8 + ["duplicate"]
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert job.tasks_validated == 4
    assert set(job.tasks.values_list("status", flat=True)) == {TaskStatus.VALIDATED}
    valid = Assignment.objects.for_tenant(tenant).filter(status=AssignmentStatus.VALID)
    assert valid.count() == 8
    assert valid.filter(credited_at__isnull=True).count() == 0
    assert sorted(Worker.objects.values_list("validated_replicas", flat=True)) == [4, 4]
    assert sorted(Worker.objects.values_list("consecutive_valid", flat=True)) == [4, 4]
    assert sum(Contributor.objects.values_list("validated_work_units", flat=True)) == 2 * 4000


def test_a_disagreement_in_a_batch_penalises_the_liar_and_asks_for_another_replica(
    tenant, owner, kernels
):
    # given one task whose two replicas disagree
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=1)
    honest, liar = new_worker()[0], new_worker()[0]
    (h_offer,) = dispatch.assignment_claim(worker_id=honest.worker_id, count=1)
    (l_offer,) = dispatch.assignment_claim(worker_id=liar.worker_id, count=1)
    wrong = bytes(len(run_offer(l_offer)))
    # when both arrive in one batch
    outcome = dispatch_batch(
        results=[result_item(honest, h_offer), result_item(liar, l_offer, output=wrong)]
    )
    # then both are stored, the task needs a third replica, and a third worker can take it
    assert [o.status for o in outcome.results] == ["accepted", "accepted"]
    task = job.tasks.get()
    assert (task.status, task.target_replicas, task.dispatchable) == (TaskStatus.OPEN, 3, True)
    third = new_worker()[0]
    (t_offer,) = dispatch.assignment_claim(worker_id=third.worker_id, count=1)
    dispatch_batch(results=[result_item(third, t_offer)])
    task.refresh_from_db()
    assert task.status == TaskStatus.VALIDATED
    assert Worker.objects.get(pk=liar.worker_id).invalid_replicas == 1
    assert Worker.objects.get(pk=liar.worker_id).consecutive_valid == 0


def test_a_batch_that_validates_a_task_cancels_its_live_replica_and_tells_its_worker(
    tenant, owner, kernels
):
    # given two tasks with three replicas wanted each, all out on three workers
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=2)
    Task.objects.unscoped().filter(job=job).update(target_replicas=3)
    sessions = [new_worker()[0] for _ in range(3)]
    for n, session in enumerate(sessions):
        Worker.objects.filter(pk=session.worker_id).update(channel_name=f"specific.w{n}")
    claimed = _claim_all(sessions, count=2)
    assert len(claimed) == 6
    # when the first two workers' agreeing results arrive in one flush
    answers, sends = flusher.flush_sync(
        [result_item(s, o) for s, o in claimed if s is not sessions[2]]
    )
    # then both tasks are validated, the third worker's replicas are cancelled, and it is told
    assert [a.status for a in answers] == ["accepted"] * 4
    assert set(job.tasks.values_list("status", flat=True)) == {TaskStatus.VALIDATED}
    third = Assignment.objects.unscoped().filter(worker_id=sessions[2].worker_id)
    assert set(third.values_list("status", flat=True)) == {AssignmentStatus.CANCELLED}
    cancels = sorted(
        (channel, message["assignment"])
        for channel, message in sends
        if message["type"] == "worker.cancel" and message["reason"] == "task_validated"
    )
    assert cancels == sorted(("specific.w2", str(a.pk)) for a in third)


def test_concurrent_batches_for_the_same_tasks_validate_exactly_once(tenant, owner, kernels):
    # given twelve tasks with three replicas wanted each (quorum 2: one is cancelled or late)
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=12)
    Task.objects.unscoped().filter(job=job).update(target_replicas=3)
    sessions = [new_worker()[0] for _ in range(3)]
    claimed = _claim_all(sessions, count=12)
    assert len(claimed) == 36
    items = [result_item(s, o) for s, o in claimed]
    # when three flushers (three processes) each take every third result, at the same time
    barrier = threading.Barrier(3)

    def flush(part: list[ResultItem]) -> list:
        try:
            barrier.wait()
            return flusher.flush_sync(part)[0]
        finally:
            connection.close()

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(flush, [items[0::3], items[1::3], items[2::3]]))
    # then every result has an answer, every task is validated once by exactly two replicas
    statuses = [a.status for part in answers for a in part]
    assert set(statuses) <= {"accepted", "late", "discarded"}
    job.refresh_from_db()
    assert job.tasks_validated == 12
    assert job.status == JobStatus.COMPLETED
    for task in Task.objects.unscoped().filter(job=job):
        assert task.assignments.filter(status=AssignmentStatus.VALID).count() == 2
    credited = Assignment.objects.unscoped().filter(job=job, credited_at__isnull=False).count()
    assert credited == 24
    assert sum(Worker.objects.values_list("validated_replicas", flat=True)) == 24


def test_a_failed_commit_answers_nothing_from_the_batch_and_each_item_runs_alone(
    tenant, owner, kernels, monkeypatch
):
    # given a batch whose transaction fails after doing all its work, and one poison item
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=2)
    sessions = [new_worker()[0] for _ in range(2)]
    items = [result_item(s, o) for s, o in _claim_all(sessions)]
    poison = ResultItem(
        contributor_id=items[0].contributor_id,
        assignment_id=items[0].assignment_id,
        output=b"xx",
        sha256=hashlib.sha256(b"xx").hexdigest(),
        elapsed_ms=1,
    )
    real = batch.dispatch_batch

    def failing(**kwargs):  # noqa: ANN003, ANN202
        with transaction.atomic():
            real(**kwargs)
            raise RuntimeError("commit failed")

    monkeypatch.setattr(flusher, "dispatch_batch", failing)
    # when the flusher handles it
    answers, sends = flusher.flush_sync([poison, *items])
    # then the batch left nothing behind; item by item, the poison is refused and the rest count
    assert isinstance(answers[0], ValueError)
    assert sends == []  # the failed batch's messages are dropped with it
    assert [a.status for a in answers[1:]] == ["accepted"] * 4
    job.refresh_from_db()
    assert job.tasks_validated == 2
    assert Assignment.objects.unscoped().filter(job=job, status=AssignmentStatus.VALID).count() == 4


def test_the_flusher_answers_only_after_the_database_returns():
    # given a flusher whose database call is held open
    async def scenario() -> None:
        release = asyncio.Event()
        seen: list[list] = []

        async def database(items: list) -> list:
            seen.append(items)
            await release.wait()
            return [f"done {item}" for item in items], []

        process = flusher.Flusher(flush_ms=1, max_items=4)
        process.database = database
        # when two items are submitted
        first = asyncio.ensure_future(process.submit("a"))
        second = asyncio.ensure_future(process.submit("b"))
        await asyncio.sleep(0.05)
        # then they went out in one batch and neither is answered before the commit
        assert seen == [["a", "b"]]
        assert not first.done()
        assert not second.done()
        release.set()
        assert await first == "done a"
        assert await second == "done b"
        process.stop()

    asyncio.run(scenario())


def test_the_flusher_raises_an_items_own_error_to_its_caller_only():
    async def scenario() -> None:
        async def database(items: list) -> list:
            return [ValueError("bad") if item == "bad" else item for item in items], []

        process = flusher.Flusher(flush_ms=1, max_items=8)
        process.database = database
        good = asyncio.ensure_future(process.submit("good"))
        with pytest.raises(ValueError, match="bad"):
            await process.submit("bad")
        assert await good == "good"
        process.stop()

    asyncio.run(scenario())


def test_claims_in_one_batch_never_give_one_contributor_two_replicas_of_a_task(
    tenant, owner, kernels
):
    # given one contributor with two workers and another contributor, two tasks of quorum 2
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=2)
    first, _ = new_worker()
    contributor = Contributor.objects.get(pk=first.contributor_id)
    second = dispatch.worker_connect(
        contributor=contributor,
        hello={"client": {"kind": "edge", "version": "test"}, "capabilities": {}, "slots": 4},
        channel_name="",
    )
    other = new_worker()[0]
    # when all three claim in one flush
    outcome = dispatch_batch(
        claims=[
            ClaimItem(worker_id=first.worker_id, count=2),
            ClaimItem(worker_id=second.worker_id, count=2),
            ClaimItem(worker_id=other.worker_id, count=2),
        ]
    )
    # then the contributor holds one replica of each task, across its two workers
    assert [len(offers) for offers in outcome.claims] == [2, 0, 2]
    for task in job.tasks.all():
        holders = list(task.assignments.values_list("contributor_id", flat=True))
        assert len(holders) == len(set(holders)) == 2


def test_heartbeats_extend_held_leases_in_one_statement_and_refuse_others(tenant, owner, kernels):
    fc_job(tenant, owner, kernels["prime_count"], tasks=2)
    holder, stranger = new_worker()[0], new_worker()[0]
    offers = dispatch.assignment_claim(worker_id=holder.worker_id, count=2)
    Assignment.objects.unscoped().update(heartbeat_at=None)
    outcome = dispatch_batch(
        heartbeats=[
            HeartbeatItem(worker_id=holder.worker_id, assignment_id=str(offers[0].assignment_id)),
            HeartbeatItem(worker_id=stranger.worker_id, assignment_id=str(offers[1].assignment_id)),
            HeartbeatItem(worker_id=holder.worker_id, assignment_id="not-a-uuid"),
        ]
    )
    assert outcome.heartbeats == [True, False, False]
    beats = dict(Assignment.objects.unscoped().values_list("id", "heartbeat_at"))
    assert beats[offers[0].assignment_id] is not None
    assert beats[offers[1].assignment_id] is None


def test_a_batch_posts_one_charge_per_tenant_and_one_credit_entry_and_the_books_balance(
    tenant, other_tenant, owner, other_owner, kernels
):
    # given a prepaid tenant with a balance and an invoiced one, each with a job of three tasks
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.CORE)
    Tenant.objects.filter(pk=other_tenant.pk).update(tier=Tier.ENTERPRISE)
    tenant.refresh_from_db()
    other_tenant.refresh_from_db()
    topup_fulfil(session_id="cs_batch", tenant_id=str(tenant.pk), amount_cents=1000)
    jobs = [
        fc_job(tenant, owner, kernels["prime_count"], tasks=3),
        fc_job(other_tenant, other_owner, kernels["prime_count"], tasks=3),
    ]
    Task.objects.unscoped().update(work_units=10 * TASK_UNITS)  # 10 cents a task
    sessions = [new_worker()[0] for _ in range(2)]
    items = [result_item(s, o) for s, o in _claim_all(sessions, count=6)]
    assert len(items) == 12
    charges_before = JournalEntry.objects.filter(kind=EntryKind.CHARGE).count()
    # when one flush validates all six tasks
    outcome = dispatch_batch(results=items)
    # then
    assert {o.status for o in outcome.results} == {"accepted"}
    usage = UsageRecord.objects.unscoped().filter(job__in=jobs)
    assert usage.count() == 6
    assert set(usage.values_list("idempotency_key", flat=True)) == {
        f"fc-task:{pk}" for pk in Task.objects.unscoped().values_list("pk", flat=True)
    }
    assert set(usage.filter(tenant=tenant).values_list("status", flat=True)) == {
        UsageStatus.CHARGED
    }
    assert set(usage.filter(tenant=other_tenant).values_list("status", flat=True)) == {
        UsageStatus.INVOICED
    }
    charges = JournalEntry.objects.filter(kind=EntryKind.CHARGE)
    assert charges.count() - charges_before == 2
    assert set(charges.values_list("tenant_id", flat=True)) >= {tenant.pk, other_tenant.pk}
    assert JournalEntry.objects.filter(kind=EntryKind.CREDIT_AWARD).count() == 1
    # each tier shares half of what was charged: one contributor-share entry per tenant too
    assert JournalEntry.objects.filter(kind=EntryKind.CONTRIBUTOR_SHARE).count() == 2
    assert ledger.reconcile().ok
    # three tasks at 10 cents came out of the prepaid balance
    from billing.metering import tenant_balance_cents

    assert tenant_balance_cents(tenant=tenant) == 1000 - 30
    # and a replayed batch changes nothing
    again = dispatch_batch(results=items)
    assert {o.status for o in again.results} == {"duplicate"}
    assert JournalEntry.objects.filter(kind=EntryKind.CHARGE).count() - charges_before == 2
    assert ledger.reconcile().ok


def test_a_wake_for_two_tasks_wakes_two_idle_consumers_not_all():
    async def scenario() -> None:
        registry = idle.IdleRegistry(recheck_s=3600, listen=False)  # no channel layer here
        woken: list[str] = []
        for name in "abcde":

            async def fill(name: str = name) -> None:
                woken.append(name)

            async def invite(invites: list) -> None:
                raise AssertionError("no invites here")

            registry.add(name, idle.IdleConsumer(worker_id=uuid.uuid4(), fill=fill, invite=invite))
        # when two tasks became dispatchable
        assert registry.wake(2) == 2
        await asyncio.sleep(0)
        # then the two longest idle claim; the others stay registered for the next wake
        assert woken == ["a", "b"]
        assert list(registry.idle) == ["c", "d", "e"]
        assert registry.wake(None) == 3
        registry.stop()

    asyncio.run(scenario())


def test_batched_claims_skip_a_paused_jobs_tasks_and_clear_their_flag(tenant, owner, kernels):
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=2)
    Job.objects.unscoped().filter(pk=job.pk).update(status=JobStatus.PAUSED)
    worker = new_worker()[0]
    outcome = dispatch_batch(claims=[ClaimItem(worker_id=worker.worker_id, count=2)])
    assert outcome.claims == [[]]
    assert not Task.objects.unscoped().filter(job=job, dispatchable=True).exists()
