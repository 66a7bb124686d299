"""FL rounds survive failures, end to end: two Daphnes behind the launcher, a Celery worker with
beat, PostgreSQL, Redis and three real ``ccgsc-worker`` processes training a 301k-parameter MLP
(five upload chunks). Each test kills or cuts off one moving part without warning while a round
is in progress, and checks that the rounds still close with the right model, each update
folded once, and each round charged and credited exactly once."""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest
from django.core.files.storage import default_storage

from billing import ledger
from billing.models import AccountKind, JournalEntry
from billing.operations import balance_adjust
from jobs.fl_artifact_models import ModelVersion, UpdateUpload, UploadStatus
from jobs.fl_models import Participation, ParticipationStatus, Round, RoundStatus
from jobs.models import Worker
from jobs.services.fl_rounds_storage import upload_chunk_keys
from tenants.tiers import Tier
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import (
    MINIMAL_MLP,
    assert_charged_and_credited_once,
    assert_versions_recompute,
    closed_rounds,
    wait_until,
    workers_online,
)
from tests.jobs.fl_helpers import fl_job
from tests.servers import TcpProxy
from tests.services.helpers import established_connections

pytestmark = [pytest.mark.services, pytest.mark.slow]

RATE = "--max-upload-bytes-per-second"


def _funded(tenant, owner) -> int:  # noqa: ANN001
    """An FL Core tenant with $50 of credit; returns its balance in cents."""
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant).balance_cents


def _job(tenant, **overrides):  # noqa: ANN001, ANN003, ANN202
    fields = {
        **MINIMAL_MLP,
        "dataset": "digits",
        "partition": "shards",
        "shards_per_client": 2,
        "partition_clients": 3,
        "rounds": 2,
        "cohort_size": 3,
        "min_reports": 3,
        "round_deadline_seconds": 90,
        "local_epochs": 1,
        "learning_rate": 0.05,
        "seed": 11,
    }
    return fl_job(tenant, **{**fields, **overrides})


def _upload_of(job, contributor_id, *, chunks: int):  # noqa: ANN001, ANN202
    """The contributor's upload in the job's first round once ``chunks`` chunks are stored."""
    upload = (
        UpdateUpload.objects.unscoped()
        .filter(participation__round__job=job, participation__contributor_id=contributor_id)
        .order_by("pk")
        .first()
    )
    return upload if upload is not None and len(upload.chunks) >= chunks else None


def test_a_worker_killed_mid_upload_is_a_dropout_and_the_rounds_go_on(fl_stack, tenant, owner):
    # given three edge workers; the victim's uplink is slow, so its upload has a middle
    balance = _funded(tenant, owner)
    victim = fl_stack.edge_worker(extra_args=(RATE, "40000"))
    for _ in range(2):
        fl_stack.edge_worker(extra_args=(RATE, "200000"))
    workers_online(3, fl_stack)
    job = _job(tenant, min_reports=2)
    # when the victim is SIGKILLed right after the server stored its first chunk
    upload = wait_until(
        lambda: _upload_of(job, victim.contributor_id, chunks=1),
        timeout_s=60,
        what="the victim's first chunk",
        logs=fl_stack.logs,
    )
    victim.stop(kill=True)
    first = Round.objects.unscoped().get(pk=upload.participation.round_id)
    assert first.status == RoundStatus.OPEN  # the kill landed mid-round, mid-upload
    assert len(upload.chunks) < upload.chunk_count
    # then the round closes on the two others' reports, with the victim a dropout
    job = wait_for_job(job.pk, timeout_s=90, stack=fl_stack)
    rounds = list(Round.objects.for_tenant(tenant).filter(job=job).order_by("number"))
    assert [r.status for r in rounds] == [RoundStatus.CLOSED] * 2
    assert [(r.cohort_size, r.reports, r.dropouts) for r in rounds] == [(3, 2, 1), (2, 2, 0)]
    victim_part = Participation.objects.for_tenant(tenant).get(
        round=rounds[0], contributor_id=victim.contributor_id
    )
    assert (victim_part.status, victim_part.included) == (ParticipationStatus.DROPPED, False)
    upload.refresh_from_db()
    assert (upload.status, upload.rejection_code) == (UploadStatus.REJECTED, "round_closed")
    assert not [key for key in upload_chunk_keys(upload) if default_storage.exists(key)]
    # and the model advanced once per round, each charged once, the victim credited nothing
    versions = ModelVersion.objects.for_tenant(tenant).filter(job=job).order_by("version")
    assert list(versions.values_list("version", flat=True)) == [0, 1, 2]
    assert_charged_and_credited_once(job, balance_before_cents=balance, logs=fl_stack.logs)
    assert not JournalEntry.objects.filter(
        idempotency_key__endswith=f":{victim.contributor_id}"
    ).exists()


def test_a_worker_cut_off_mid_upload_reconnects_and_resumes_without_resending(
    fl_stack, tenant, owner
):
    # given three edge workers, one of them behind a network path the test can cut
    balance = _funded(tenant, owner)
    proxy = TcpProxy(fl_stack.daphne.port)
    try:
        cut_off = fl_stack.edge_worker(url=proxy.url, extra_args=(RATE, "150000"))
        fl_stack.edge_worker()
        fl_stack.edge_worker()
        workers_online(3, fl_stack)
        worker_row = Worker.objects.get(contributor_id=cut_off.contributor_id)
        job = _job(tenant, rounds=1)
        upload = wait_until(
            lambda: _upload_of(job, cut_off.contributor_id, chunks=2),
            timeout_s=60,
            what="two chunks of the cut-off worker",
            logs=fl_stack.logs,
        )
        stored_before = dict(upload.chunks)
        # when its network goes away (socket and uploads) until an upload request has failed
        proxy.cut()
        wait_until(
            lambda: not Worker.objects.get(pk=worker_row.pk).is_online,
            timeout_s=30,
            what="the server to see the socket close",
            logs=fl_stack.logs,
        )
        wait_until(
            lambda: any(" /fl/uploads/" in line for line in proxy.refused_lines),
            timeout_s=30,
            what="an upload request to fail",
            logs=fl_stack.logs,
        )
        proxy.restore()
        # then it reconnects as the same worker, the upload resumes and the round closes whole
        job = wait_for_job(job.pk, timeout_s=90, stack=fl_stack)
        # (its socket's reconnect back-off races the upload's retries: under load the round
        # can close before the socket is back, through the proxy)
        wait_until(
            lambda: Worker.objects.get(pk=worker_row.pk).is_online,
            timeout_s=30,
            what="the cut-off worker to reconnect",
            logs=fl_stack.logs,
        )
    finally:
        proxy.close()
    upload.refresh_from_db()
    assert upload.status == UploadStatus.FOLDED
    assert {k: upload.chunks[k] for k in stored_before} == stored_before
    puts = Counter(
        int(line.split("/chunks/")[1].split()[0])
        for line in proxy.request_lines
        if line.startswith(f"PUT /fl/uploads/{upload.pk}/chunks/")
    )
    # the chunks stored before the cut were not sent again; every other one arrived (a chunk
    # whose request the cut dropped in flight may have been sent twice)
    assert all(puts[int(index)] == 1 for index in stored_before)
    assert set(puts) == set(range(upload.chunk_count))
    assert proxy.request_lines.count("POST /fl/uploads/ HTTP/1.1") >= 2  # created, then resumed
    assert proxy.request_lines.count("GET /ws/edge/ HTTP/1.1") >= 2  # connected, reconnected
    (round_,) = closed_rounds(job)
    assert (round_.reports, round_.dropouts) == (3, 0)
    assert_versions_recompute(job)
    assert_charged_and_credited_once(job, balance_before_cents=balance, logs=fl_stack.logs)


@pytest.mark.parametrize("victim", ["one_daphne", "every_daphne"])
def test_daphne_killed_mid_round_loses_nothing_and_counts_nothing_twice(
    fl_stack, tenant, owner, victim
):
    # given three edge workers connected through the launcher's two Daphnes
    balance = _funded(tenant, owner)
    for _ in range(3):
        fl_stack.edge_worker(extra_args=(RATE, "300000"))
    workers_online(3, fl_stack)
    launcher = fl_stack.daphne
    job = _job(tenant)
    # when an upload is under way, Daphne is SIGKILLed: the one holding the most connections
    # (the launcher replaces it; the other serves meanwhile), or every process of the node,
    # started again on the same port
    wait_until(
        lambda: (
            UpdateUpload.objects.unscoped()
            .filter(participation__round__job=job, participation__round__number=1)
            .exclude(chunks={})
            .exists()
        ),
        timeout_s=60,
        what="a stored chunk in round 1",
        logs=fl_stack.logs,
    )
    pids = launcher.daphne_pids()
    connections = established_connections(launcher.port, pids)
    if victim == "one_daphne":
        killed = [max(pids, key=lambda pid: connections[pid])]
        assert connections[killed[0]] >= 1, connections
        os.kill(killed[0], signal.SIGKILL)
    else:
        killed = pids
        launcher.stop(kill=True)
        launcher.start()
    assert Round.objects.for_tenant(tenant).get(job=job, number=1).status == RoundStatus.OPEN
    # then the workers reconnect, every update of both rounds arrives and is folded once
    job = wait_for_job(job.pk, timeout_s=120, stack=fl_stack)
    rounds = closed_rounds(job)
    assert [(r.number, r.reports, r.dropouts) for r in rounds] == [(1, 3, 0), (2, 3, 0)]
    parts = Participation.objects.for_tenant(tenant).filter(round__job=job)
    assert set(parts.values_list("status", "included")) == {(ParticipationStatus.REPORTED, True)}
    assert_versions_recompute(job)
    assert_charged_and_credited_once(job, balance_before_cents=balance, logs=fl_stack.logs)
    # and two Daphnes serve again, none of them a killed one
    wait_until(
        lambda: len(launcher.daphne_pids()) == 2 and not set(killed) & set(launcher.daphne_pids()),
        timeout_s=30,
        what="two live Daphnes",
        logs=fl_stack.logs,
    )


def test_a_celery_worker_killed_mid_round_resumes_the_fold_from_its_checkpoint(
    fl_stack, tenant, owner
):
    # given three edge workers whose uploads finish one after the other
    balance = _funded(tenant, owner)
    fl_stack.edge_worker()
    fl_stack.edge_worker(extra_args=(RATE, "400000"))
    fl_stack.edge_worker(extra_args=(RATE, "200000"))
    workers_online(3, fl_stack)
    job = _job(tenant, rounds=1)

    def folding() -> Round | None:
        round_ = Round.objects.for_tenant(tenant).filter(job=job, number=1).first()
        uploads = UpdateUpload.objects.unscoped().filter(participation__round__job=job)
        busy = uploads.filter(status=UploadStatus.COMPLETE).exists()
        return round_ if round_ is not None and (busy or round_.reports >= 1) else None

    # when the Celery worker (and its beat) is SIGKILLed as the first fold runs or commits
    round_ = wait_until(folding, timeout_s=60, what="the first fold", logs=fl_stack.logs)
    fl_stack.celery.stop(kill=True)
    round_.refresh_from_db()
    assert round_.status == RoundStatus.OPEN
    # and the other uploads complete while no Celery worker runs: their folds wait
    wait_until(
        lambda: (
            UpdateUpload.objects.unscoped()
            .filter(participation__round=round_, status__in=[UploadStatus.COMPLETE, "folded"])
            .count()
            == 3
        ),
        timeout_s=60,
        what="three complete uploads",
        logs=fl_stack.logs,
    )
    round_.refresh_from_db()
    assert round_.status == RoundStatus.OPEN
    assert round_.reports < 3
    fl_stack.celery.start()
    # then the fold goes on from its last checkpoint and the round closes once, whole
    job = wait_for_job(job.pk, timeout_s=120, stack=fl_stack)
    (closed,) = closed_rounds(job)
    assert (closed.reports, closed.dropouts, closed.metrics["participants"]) == (3, 0, 3)
    assert_versions_recompute(job)
    assert_charged_and_credited_once(job, balance_before_cents=balance, logs=fl_stack.logs)
