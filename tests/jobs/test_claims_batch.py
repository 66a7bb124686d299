"""Batched claims lock only as many tasks as the replicas they want need (a task's open replicas
going to as many claimers), so claims of several processes running at the same time share a short
queue; tasks a claimer's contributor already holds are skipped for it and the next ones locked
instead. Real PostgreSQL, two connections."""

from __future__ import annotations

import pytest
from django.db import transaction

from jobs import dispatch
from jobs.dispatch.batch_leases import ClaimItem, claims_batch
from jobs.models import Task, Worker
from tests.held_transaction import transaction_held
from tests.jobs.helpers import fc_job, new_worker

pytestmark = [pytest.mark.services]


@pytest.mark.django_db(transaction=True)
def test_a_claim_flush_still_open_leaves_the_tasks_it_does_not_take_to_others(
    tenant, owner, kernels
):
    # given a job of two single-replica tasks and two idle workers
    fc_job(tenant, owner, kernels["prime_count"], tasks=2, quorum=1, start_after=True)
    first, second = new_worker(slots=1)[0], new_worker(slots=1)[0]
    # when one process's flush claimed one task and has not committed yet, and another
    # process's flush claims one task at the same time
    with (
        transaction_held(
            lambda: claims_batch(items=[ClaimItem(worker_id=first.worker_id, count=1)])
        ) as mine_claimed,
        transaction.atomic(),
    ):
        theirs_claimed = claims_batch(items=[ClaimItem(worker_id=second.worker_id, count=1)])
    # then each got one task, not the second nothing because the first locked both
    ((mine,),), ((theirs,),) = mine_claimed, theirs_claimed
    assert {mine.task_index, theirs.task_index} == {0, 1}


@pytest.mark.django_db(transaction=True)
def test_a_claim_flush_locks_one_task_per_quorum_of_the_replicas_it_wants(tenant, owner, kernels):
    # given a job of two tasks at quorum 2 and four idle workers of four contributors
    fc_job(tenant, owner, kernels["prime_count"], tasks=2, quorum=2, start_after=True)
    workers = [new_worker(slots=1)[0] for _ in range(4)]

    def claim(claimers: list) -> list:
        return claims_batch(items=[ClaimItem(worker_id=w.worker_id, count=1) for w in claimers])

    # when one process's flush claimed a replica for each of two workers, not committed yet,
    # and another process's flush claims for the other two at the same time
    with transaction_held(lambda: claim(workers[:2])) as first_claimed, transaction.atomic():
        second_claimed = claim(workers[2:])
    # then the first flush locked one task and gave both its replicas, and the second flush got
    # both replicas of the other: four workers served from a queue of two tasks
    first = [offer.task_index for (offer,) in first_claimed]
    second = [offer.task_index for (offer,) in second_claimed]
    assert len(set(first)) == 1
    assert len(set(second)) == 1
    assert sorted(first + second) == [0, 0, 1, 1]


@pytest.mark.django_db
def test_a_claim_locks_more_when_later_tasks_want_fewer_replicas_than_the_first(
    tenant, owner, kernels
):
    # given a job of three tasks at quorum 2 whose second task already has one replica out
    job = fc_job(tenant, owner, kernels["prime_count"], tasks=3, quorum=2, start_after=True)
    tasks = Task.objects.unscoped().filter(job=job)
    session, _ = new_worker(slots=1)
    tasks.filter(index=0).update(dispatchable=False)
    (held,) = dispatch.assignment_claim(worker_id=session.worker_id, count=1)
    assert held.task_index == 1
    tasks.filter(index=0).update(dispatchable=True)
    # when four workers of other contributors claim one replica each in one flush (the first
    # task wants two, so two tasks are locked first: three replicas, one short)
    workers = [new_worker(slots=1)[0] for _ in range(4)]
    with transaction.atomic():
        claimed = claims_batch(items=[ClaimItem(worker_id=w.worker_id, count=1) for w in workers])
    # then every worker got one, the last from a task locked by a second round
    assert sorted(offer.task_index for (offer,) in claimed) == [0, 0, 1, 2]
    assert tasks.get(index=2).active_replicas == 1


@pytest.mark.django_db
def test_tasks_a_claimers_contributor_holds_are_skipped_and_the_next_ones_locked(
    tenant, owner, kernels
):
    # given a job of four tasks at quorum 2, whose first two a contributor's worker holds
    fc_job(tenant, owner, kernels["prime_count"], tasks=4, quorum=2, start_after=True)
    session, _ = new_worker(slots=2)
    held = dispatch.assignment_claim(worker_id=session.worker_id, count=2)
    assert [offer.task_index for offer in held] == [0, 1]
    # and a second worker of the same contributor
    other = dispatch.worker_connect(
        contributor=Worker.objects.get(pk=session.worker_id).contributor,
        hello={
            "v": 1,
            "type": "hello",
            "token": "x" * 20,
            "client": {"kind": "edge", "version": "test"},
            "capabilities": {},
            "slots": 2,
        },
        channel_name="",
    )
    # when it claims two tasks in a batch with a worker of another contributor
    stranger, _ = new_worker(slots=1)
    with transaction.atomic():
        mine, theirs = claims_batch(
            items=[
                ClaimItem(worker_id=other.worker_id, count=2),
                ClaimItem(worker_id=stranger.worker_id, count=1),
            ]
        )
    # then the contributor's worker gets the next two tasks, never a second replica of its own
    assert sorted(offer.task_index for offer in mine) == [2, 3]
    # and the stranger gets a replica of a task it does not hold
    assert len(theirs) == 1
    assert theirs[0].task_index in {0, 1, 2, 3}
