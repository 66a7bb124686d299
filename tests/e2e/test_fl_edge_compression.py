"""Compressed uploads end to end: three `ccgsc-worker` processes train the real logreg kernel under
Daphne, Celery, PostgreSQL and Redis and upload int8, top-k (with each worker's error-feedback
residual carried from round 1 to round 2) or signSGD payloads. Every version must equal what the
pure modules compute from the same payloads, re-encoded here from each participation's invite
and the kernel's update (the top-k residual replayed per worker, round after round). A payload
whose header is not the job's is refused over the wire with its code and folds nothing."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from billing.operations import balance_adjust
from ccgsc_worker import training
from ccgsc_worker.compression import ResidualStore
from ccgsc_worker.transfer import Http, upload_update
from jobs import protocol
from jobs.aggregation import SignVote, SparseUpdate, StreamingFold, TopKResidual, int8_decode
from jobs.federated.client import load_training_kernel
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Round, RoundStatus
from jobs.fl_shards import job_shards, training_kernel_sha256
from jobs.services.model_registry import model_version_read
from tenants.tiers import Tier
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import workers_online
from tests.jobs.fl_helpers import fl_job
from tests.jobs.test_fl_rounds import workers

pytestmark = [pytest.mark.services, pytest.mark.slow]

ROUNDS = 2
D = 650  # logreg [64, 10]
SIGN_STEP = 0.005


def _client_body(job, participation, weights: np.ndarray, residuals: ResidualStore) -> bytes:  # noqa: ANN001
    """What the invited edge worker uploaded: its invite as the consumer sent it, the shard the
    site served, the same kernel, training and encoding code (and, for top-k, its residual)."""
    message = protocol.round_invite(
        event=participation.invite, kernel_sha256=training_kernel_sha256("logreg"), deadline_ms=0
    )
    x, y, _, _ = training.decode_shard(job_shards(job)[message["data"]["client_index"]].body)
    dense = training.train_update(
        load_training_kernel("logreg").runner,
        sizes=list(message["model"]["sizes"]),
        weights=weights.astype("<f4").tobytes(),
        x=x,
        y=y,
        hyperparameters=message["hyperparameters"],
        seed=int(message["seed"]),
        time_left=lambda: 60.0,
    )
    body = training.compress_body(
        dense,
        compression=message["hyperparameters"]["compression"],
        job=str(job.pk),
        residuals=residuals,
    )
    residuals.commit(str(job.pk))
    return body


@pytest.mark.parametrize("scheme", ["int8", "topk", "signsgd"])
def test_edge_workers_upload_compressed_updates_and_match_the_pure_modules(
    fc_stack, tenant, owner, scheme
):
    # given an FL Core tenant and three edge workers online
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    for _ in range(3):
        fc_stack.edge_worker()
    workers_online(3, fc_stack)
    # when the job runs two rounds of three clients under the scheme
    options = {"server_learning_rate": SIGN_STEP} if scheme == "signsgd" else {}
    job = fl_job(
        tenant,
        dataset="digits",
        partition="iid",
        shards_per_client=None,
        partition_clients=3,
        rounds=ROUNDS,
        cohort_size=3,
        min_reports=3,
        round_deadline_seconds=60,
        learning_rate=0.1,
        compression=scheme,
        topk_fraction=0.1 if scheme == "topk" else None,
        strategy_options=options,
        seed=9,
    )
    job = wait_for_job(job.pk, timeout_s=150, stack=fc_stack)
    rounds = list(Round.objects.for_tenant(tenant).filter(job=job).order_by("number"))
    assert [r.status for r in rounds] == [RoundStatus.CLOSED] * ROUNDS, fc_stack.logs()
    assert [r.reports for r in rounds] == [3] * ROUNDS
    # then each version is the pure modules' aggregate of the re-encoded uploads
    versions = ModelVersion.objects.for_tenant(tenant).filter(job=job).order_by("version")
    weights = [model_version_read(model_version=v) for v in versions]
    residuals: dict[str, ResidualStore] = {}  # each worker process keeps its own
    for number, round_ in enumerate(rounds, start=1):
        base = weights[number - 1]
        participations = list(round_.participations.order_by("pk"))
        payloads = {
            p.pk: _client_body(
                job, p, base, residuals.setdefault(str(p.worker_id), ResidualStore())
            )[training.METRICS.size :]
            for p in participations
        }
        assert round_.bytes_up == 3 * (training.METRICS.size + len(payloads[participations[0].pk]))
        if scheme == "signsgd":
            vote = SignVote(D)
            for p in participations:
                vote.fold(str(p.pk), payloads[p.pk])
            expected = base.astype(np.float64) + SIGN_STEP * vote.finish().astype(np.float64)
        else:
            fold = StreamingFold(D)
            for p in participations:
                if scheme == "int8":
                    fold.fold(str(p.pk), int8_decode(payloads[p.pk]), float(p.samples))
                else:
                    sparse = SparseUpdate.decode(payloads[p.pk])
                    fold.fold_sparse(str(p.pk), sparse.indices, sparse.values, float(p.samples))
            expected = base.astype(np.float64) + fold.finish().astype(np.float64)
        np.testing.assert_allclose(weights[number], expected.astype(np.float32), atol=1e-6)
        assert not np.array_equal(weights[number], base)
    if scheme == "topk":  # the residual was carried: round 2 sent some of round 1's remainder
        assert all(np.abs(store.residual(str(job.pk), D)).max() > 0 for store in residuals.values())


def test_a_malformed_payload_is_refused_over_the_wire_and_changes_nothing(fc_stack, tenant, owner):
    # given a top-k round (k = 65) of two invitees, each uploading through the edge worker's own
    # upload client to Daphne, folds in Celery
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    pool = {str(worker.pk): worker for worker in workers(2)}
    job = fl_job(
        tenant,
        partition_clients=10,
        cohort_size=2,
        min_reports=2,
        compression="topk",
        topk_fraction=0.1,
        round_deadline_seconds=300,
    )
    deadline = time.monotonic() + 30  # the round opens after the start commits
    while not Round.objects.for_tenant(tenant).filter(job=job, number=1).exists():
        assert time.monotonic() < deadline, fc_stack.logs()
        time.sleep(0.2)
    round_ = Round.objects.for_tenant(tenant).get(job=job, number=1)
    bad, good = round_.participations.order_by("pk")

    def send(participation, payload: bytes) -> tuple[str, str]:  # noqa: ANN001
        worker = pool[str(participation.worker_id)]
        return upload_update(
            Http(fc_stack.daphne.url, worker.token),
            url="/fl/uploads/",
            participation=participation.pk,
            base_version=0,
            body=struct.pack("<IIdIId", 0, 5, 1.0, 0, D, 1.0) + payload,
            chunk_bytes=256,
            time_left=lambda: 30.0,
        )

    update = np.linspace(-1, 1, D, dtype=np.float32)
    # when the first sends a header with another k, padded to the upload's size
    wrong = TopKResidual(D).compress(update, k=10).encode()
    outcome = send(bad, wrong.ljust(len(TopKResidual(D).compress(update, k=65).encode()), b"\0"))
    # then it is refused with its code and reason, and nothing was folded
    assert outcome[0] == "rejected"
    assert outcome[1].startswith("bad_encoding: topk payload header says parameter 10, d 650")
    bad.refresh_from_db()
    assert (bad.status, bad.rejection_code) == ("rejected", "bad_encoding")
    round_.refresh_from_db()
    assert (round_.status, round_.reports, round_.fold_checkpoint_key) == ("open", 0, "")
    # and the other's well-formed payload folds alone
    assert send(good, TopKResidual(D).compress(update, k=65).encode()) == ("uploaded", "")
    deadline = time.monotonic() + 30
    while Round.objects.for_tenant(tenant).get(pk=round_.pk).reports < 1:
        assert time.monotonic() < deadline, fc_stack.logs()
        time.sleep(0.2)
    round_.refresh_from_db()
    assert (round_.status, round_.reports) == ("open", 1)
