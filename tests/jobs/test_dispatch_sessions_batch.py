"""Hellos and disconnects in one flush, and the idle re-check's one query, against real
PostgreSQL: same outcomes as item by item, in a fixed number of statements whatever the batch."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from jobs import dispatch, services
from jobs.dispatch import idle
from jobs.dispatch.batch import dispatch_batch
from jobs.dispatch.batch_sessions import DisconnectItem, HelloItem
from jobs.models import Task, Worker
from tenants.roles import Role
from tests.factories import ContributorFactory
from tests.jobs.helpers import HELLO, fc_job, new_worker

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def _hello_item(contributor, *, resume: uuid.UUID | None = None, version: int | None = None):  # noqa: ANN001, ANN202
    token = dispatch.worker_token_issue(contributor=contributor)
    contributor_id, signed_version = dispatch.worker_token_read(token=token)
    hello = {**HELLO, "token": token, "slots": 2}
    if resume is not None:
        hello["resume"] = str(resume)
    return HelloItem(
        contributor_id=contributor_id,
        token_version=signed_version if version is None else version,
        hello=hello,
        channel_name=f"chan-{uuid.uuid4().hex[:6]}",
    )


def test_a_batch_of_hellos_registers_resumes_and_refuses_like_one_by_one(tenant, owner, kernels):
    # given a worker holding a lease, a revoked token, a banned contributor and fresh devices
    fc_job(tenant, owner, kernels["prime_count"], tasks=3)
    old, _ = new_worker(slots=1)
    (offer,) = dispatch.assignment_claim(worker_id=old.worker_id, count=1)
    Worker.objects.filter(pk=old.worker_id).update(is_online=False)
    fresh = [ContributorFactory() for _ in range(20)]
    revoked = ContributorFactory()
    banned = ContributorFactory(is_banned=True)
    old_contributor = Worker.objects.get(pk=old.worker_id).contributor
    stranger = ContributorFactory()
    items = [
        _hello_item(old_contributor, resume=old.worker_id),
        *[_hello_item(c) for c in fresh],
        _hello_item(revoked, version=revoked.token_version - 1),
        _hello_item(banned),
        # resuming someone else's worker gets a new worker of one's own, as one by one
        _hello_item(stranger, resume=old.worker_id),
    ]
    # when they arrive in one flush
    with CaptureQueriesContext(connection) as queries:
        outcome = dispatch_batch(hellos=items)
    # then the resumed worker lists its lease, the new ones are online, refusals are None
    resumed, *rest = outcome.hellos
    assert (resumed.worker_id, resumed.resumed) == (old.worker_id, True)
    assert resumed.outstanding == [str(offer.assignment_id)]
    assert [s is None for s in rest] == [False] * 20 + [True, True, False]
    assert rest[-1].worker_id != old.worker_id
    assert rest[-1].resumed is False
    assert rest[-1].contributor_id == stranger.pk
    row = Worker.objects.get(pk=old.worker_id)
    assert (row.is_online, row.slots, row.channel_name) == (True, 2, items[0].channel_name)
    assert Worker.objects.filter(is_online=True).count() == 22
    # and 23 hellos cost a fixed handful of statements, not a transaction each
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) <= 8, statements


def test_the_fallback_hello_refuses_a_revoked_token_and_registers_a_good_one():
    from jobs.dispatch.flusher import _run_alone

    contributor = ContributorFactory()
    good = _run_alone(_hello_item(contributor))
    assert Worker.objects.get(pk=good.worker_id).is_online
    assert _run_alone(_hello_item(contributor, version=contributor.token_version + 1)) is None


def test_disconnects_in_one_batch_mark_every_worker_offline():
    sessions = [new_worker()[0] for _ in range(5)]
    outcome = dispatch_batch(disconnects=[DisconnectItem(worker_id=s.worker_id) for s in sessions])
    assert outcome.disconnects == [None] * 5
    assert Worker.objects.filter(is_online=True).count() == 0


def test_the_idle_query_finds_only_workers_that_could_claim(tenant, owner, kernels):
    # given one task of quorum 2, a worker already holding it, a fresh worker, a banned one and
    # a private-pool worker of another tenant's pool
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=1)
    holder, _ = new_worker(slots=1)
    assert len(dispatch.assignment_claim(worker_id=holder.worker_id, count=1)) == 1
    fresh, _ = new_worker(slots=1)
    banned, _ = new_worker(slots=1)
    Worker.objects.filter(pk=banned.worker_id).update(is_banned=True)
    pooled, _ = new_worker(slots=1, pool_tenant=tenant)
    ids = [holder.worker_id, fresh.worker_id, banned.worker_id, pooled.worker_id]
    # when the re-check asks (two queries, whatever the number of workers)
    with CaptureQueriesContext(connection) as queries:
        found = idle.idle_work_unscoped(worker_ids=ids)
    # then only the fresh public worker and the tenant's own pool worker could claim its replica
    assert found.claimable == {fresh.worker_id, pooled.worker_id}
    assert found.replicas == 1
    assert found.invites == {}
    assert len(queries.captured_queries) == 3
    # and with the job paused nothing is claimable (its tasks leave the queue)
    services.job_pause(job=job, actor_role=Role.OWNER)
    assert idle.idle_work_unscoped(worker_ids=ids).claimable == set()


def _task_rows_read() -> tuple[int, int]:
    """This transaction's reads of the task table so far: (rows read by sequential scans, rows
    fetched through indexes)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_xact_user_tables WHERE relname = %s",
            [Task._meta.db_table],
        )
        row = cursor.fetchone()
    return (row[0], row[1]) if row else (0, 0)


def test_the_idle_query_reads_the_queue_from_its_head_whatever_the_statistics(
    tenant, owner, kernels
):
    # given planner statistics taken while the task table was empty (as after a big job's
    # tasks were just written, before autovacuum analyzes them), twenty idle workers online,
    # and a job of 3,000 tasks of which the start queued only the first few
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Task._meta.db_table}")
    sessions = [new_worker(slots=1)[0] for _ in range(20)]
    fc_job(tenant, owner, kernels["prime_count"], tasks=3000, chunk_size=10)
    queued = Task.objects.unscoped().filter(dispatchable=True).count()
    assert 0 < queued < 200
    # when a re-check asks which of them could claim
    with transaction.atomic():
        before = _task_rows_read()
        found = idle.idle_work_unscoped(worker_ids=[s.worker_id for s in sessions])
        seq_read, fetched = (
            after - was for after, was in zip(_task_rows_read(), before, strict=True)
        )
    # then every one of them could, the queue wants at least as many replicas as there are
    # workers, and the task table was read along the queue's index, not scanned: the query
    # that asked with EXISTS read the whole table once per worker (about 60,000 rows here)
    assert found.claimable == {s.worker_id for s in sessions}
    assert found.replicas >= len(sessions)
    assert seq_read < 3000, (seq_read, fetched)


def test_a_recheck_wakes_only_idle_consumers_with_work_and_no_more_than_the_replicas(
    tenant, owner, kernels
):
    # given three idle consumers of which one already holds the only task's replica
    fc_job(tenant, owner, kernels["prime_count"], tasks=1)
    sessions = [new_worker(slots=1)[0] for _ in range(3)]
    assert len(dispatch.assignment_claim(worker_id=sessions[0].worker_id, count=1)) == 1

    async def scenario() -> list[int]:
        registry = idle.IdleRegistry(recheck_s=3600, listen=False)
        woken: list[int] = []
        for index, session in enumerate(sessions):

            async def fill(index: int = index) -> None:
                woken.append(index)

            async def invite(invites: list) -> None:
                raise AssertionError("no invites")

            registry.add(
                f"c{index}",
                idle.IdleConsumer(worker_id=session.worker_id, fill=fill, invite=invite),
            )
        # when the process re-checks them
        count = await registry.recheck()
        await asyncio.sleep(0)
        registry.stop()
        assert count == 1
        assert list(registry.idle) == ["c0", "c2"]
        return woken

    # then the one replica left went to the longest-idle consumer that could take it
    assert asyncio.run(scenario()) == [1]
