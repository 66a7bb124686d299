"""A result's refill (group commit): the worker's next tasks are claimed in the result's own flush
and ride on its outcome, in one transaction; a refused result claims nothing; the item-by-item
fallback refills too. Real PostgreSQL."""

from __future__ import annotations

from dataclasses import replace

import pytest
from django.db import transaction

from jobs import dispatch
from jobs.dispatch import batch, flusher
from jobs.dispatch.batch import dispatch_batch
from jobs.models import Assignment, AssignmentStatus
from tests.jobs.helpers import fc_job, new_worker, result_item

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def _held(session) -> set[str]:  # noqa: ANN001
    return {
        str(pk)
        for pk in Assignment.objects.unscoped()
        .filter(worker_id=session.worker_id, status=AssignmentStatus.ASSIGNED)
        .values_list("id", flat=True)
    }


def test_a_stored_result_brings_its_workers_next_tasks_in_the_same_flush(tenant, owner, kernels):
    # given a worker holding one replica of a six-task job
    fc_job(tenant, owner, kernels["prime_count"], tasks=6)
    worker = new_worker()[0]
    (offer,) = dispatch.assignment_claim(worker_id=worker.worker_id, count=1)
    # when its result arrives with a refill of two
    outcome = dispatch_batch(results=[result_item(worker, offer, refill=2)])
    # then the result is stored and two new replicas (other tasks) are the worker's, as offers
    (stored,) = outcome.results
    assert stored.status == "accepted"
    assert len(stored.offers) == 2
    assert {str(o.assignment_id) for o in stored.offers} == _held(worker)
    assert offer.task_index not in {o.task_index for o in stored.offers}


def test_a_refused_result_claims_nothing(tenant, owner, kernels):
    # given a worker holding one replica
    fc_job(tenant, owner, kernels["prime_count"], tasks=4)
    worker = new_worker()[0]
    (offer,) = dispatch.assignment_claim(worker_id=worker.worker_id, count=1)
    bad = replace(result_item(worker, offer, refill=3), sha256="0" * 64)
    # when its result does not match its hash
    outcome = dispatch_batch(results=[bad])
    # then it is refused and the worker holds exactly what it held before
    assert isinstance(outcome.results[0], ValueError)
    assert _held(worker) == {str(offer.assignment_id)}


def test_the_item_by_item_fallback_refills_too(tenant, owner, kernels, monkeypatch):
    # given a batch whose transaction fails, so every item runs alone
    fc_job(tenant, owner, kernels["prime_count"], tasks=4)
    worker = new_worker()[0]
    (offer,) = dispatch.assignment_claim(worker_id=worker.worker_id, count=1)
    real = batch.dispatch_batch

    def failing(**kwargs):  # noqa: ANN003, ANN202
        with transaction.atomic():
            real(**kwargs)
            raise RuntimeError("commit failed")

    monkeypatch.setattr(flusher, "dispatch_batch", failing)
    # when the flusher handles the result with a refill of one
    answers, _ = flusher.flush_sync([result_item(worker, offer, refill=1)])
    # then alone it was stored and one new replica came with it
    (answer,) = answers
    assert answer.status == "accepted"
    assert len(answer.offers) == 1
    assert _held(worker) == {str(answer.offers[0].assignment_id)}
