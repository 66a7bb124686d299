"""Compressed uploads in rounds (int8, top-k, signSGD): what the invite says, the upload's size,
the payload header checked at completion, and the fold decoding each scheme — the new version
equal to what the pure modules compute from the same payloads. Through the upload protocol,
PostgreSQL and (eager) Celery."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from billing.operations import balance_adjust
from ccgsc_worker.compression import encoded_bytes
from jobs import protocol
from jobs.aggregation import (
    FedAvg,
    QFedAvgFold,
    SignVote,
    SparseUpdate,
    StreamingFold,
    TopKResidual,
    coordinate_median,
    int8_decode,
    int8_encode,
    multi_krum,
    sign_encode,
)
from jobs.fl_artifact_models import UpdateUpload, UploadStatus
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.services.model_registry import latest_version, model_version_read
from tenants.tiers import Tier
from tests.jobs.fl_helpers import fl_job
from tests.jobs.test_fl_rounds import D, Uploader, open_round, shard_size, stored, workers

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }


@pytest.fixture
def enterprise(tenant, owner):
    tenant.tier = Tier.ENTERPRISE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return tenant


def compressed_body(payload: bytes, *, samples: int, loss_sum: float = 1.0) -> bytes:
    """An upload body: the kernel's metrics header (d = the model's), then the payload."""
    return struct.pack("<IIdIId", 0, samples, loss_sum, 0, D, 1.0) + payload


def _upload_all(job, who, payloads, django_capture_on_commit_callbacks) -> dict[int, int]:
    samples = {p: shard_size(job, p) for p in who}
    with django_capture_on_commit_callbacks(execute=True):
        for participation_id, worker in who.items():
            participation = Participation.objects.for_tenant(job.tenant).get(pk=participation_id)
            data = compressed_body(payloads[participation_id], samples=samples[participation_id])
            _, done = Uploader(worker, participation).send(data)
            assert done.status_code == 202, done.content
    return samples


def _updates(who, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {p: rng.normal(0, 0.01, D).astype(np.float32) for p in who}


def test_an_int8_round_invites_with_the_seed_and_folds_the_decoded_updates(
    enterprise, django_capture_on_commit_callbacks, tmp_path
):
    # Given: an int8 job and a round of three
    job = fl_job(enterprise, cohort_size=3, min_reports=3, compression="int8")
    round_, who = open_round(job, workers(3))
    w0 = model_version_read(model_version=latest_version(job=job))
    invites = {p.pk: p.invite for p in Participation.objects.for_tenant(enterprise)}
    # Then: each invite names the scheme and its own rounding seed; uploads are int8-sized
    expected_bytes = 32 + encoded_bytes("int8", D)
    for participation_id, invite in invites.items():
        assert invite["compression"] == {"scheme": "int8", "seed": invite["seed"] & 0xFFFFFFFF}
        assert invite["upload"]["total_bytes"] == expected_bytes == 32 + 16 + 4 * 3 + D
        message = protocol.round_invite(event=invite, kernel_sha256="a" * 64, deadline_ms=1000)
        assert message["hyperparameters"]["compression"] == invite["compression"]
        assert participation_id in who
    # When: each client uploads its int8 payload, encoded with the invite's seed
    updates = _updates(who, 5)
    payloads = {p: int8_encode(updates[p], seed=invites[p]["compression"]["seed"]) for p in who}
    samples = _upload_all(job, who, payloads, django_capture_on_commit_callbacks)
    # Then: version 1 is FedAvg over the decoded updates, as the pure fold computes it
    fold = StreamingFold(D)
    for p in sorted(who):
        fold.fold(str(p), int8_decode(payloads[p]), float(samples[p]))
    expected = FedAvg().step(weights=w0, mean_delta=fold.finish()).astype(np.float32)
    np.testing.assert_array_equal(
        model_version_read(model_version=latest_version(job=job)), expected
    )
    round_.refresh_from_db()
    assert (round_.status, round_.reports, round_.bytes_up) == (
        RoundStatus.CLOSED,
        3,
        3 * expected_bytes,
    )
    assert stored(tmp_path, "fl-uploads") == []


def test_a_topk_round_folds_sparse_updates_and_krum_decodes_them(
    enterprise, django_capture_on_commit_callbacks
):
    # Given: top-k jobs keeping 10 % of the coordinates, with FedAvg and with Krum
    pool = workers(5)
    for strategy, options in (("fedavg", {}), ("krum", {"byzantine": 1})):
        job = fl_job(
            enterprise,
            cohort_size=5,
            min_reports=5,
            compression="topk",
            topk_fraction=0.1,
            server_strategy=strategy,
            strategy_options=options,
        )
        round_, who = open_round(job, pool)
        w0 = model_version_read(model_version=latest_version(job=job))
        k = -(-D // 10)
        assert {p.invite["compression"]["k"] for p in round_.participations.all()} == {k}
        # When: each client sends the top k of its update (its residual carried a round)
        payloads = {}
        for p, update in _updates(who, 6).items():
            residual = TopKResidual(D)
            residual.compress(update * 0.5, k=k)
            payloads[p] = residual.compress(update, k=k).encode()
        samples = _upload_all(job, who, payloads, django_capture_on_commit_callbacks)
        # Then: the new version is what the pure modules give for those payloads
        sparse = {p: SparseUpdate.decode(payloads[p]) for p in sorted(who)}
        if strategy == "fedavg":
            fold = StreamingFold(D)
            for p, update in sparse.items():
                fold.fold_sparse(str(p), update.indices, update.values, float(samples[p]))
            aggregate = fold.finish()
        else:
            dense = np.stack([update.to_dense() for update in sparse.values()])
            weights = np.array([samples[p] for p in sparse], dtype=np.float64)
            aggregate = multi_krum(dense, byzantine=1, selected=1, weights=weights)
        expected = FedAvg().step(weights=w0, mean_delta=aggregate).astype(np.float32)
        version = latest_version(job=job)
        assert version.version == 1, strategy
        np.testing.assert_array_equal(model_version_read(model_version=version), expected)


def test_a_signsgd_round_steps_by_the_majority_vote(enterprise, django_capture_on_commit_callbacks):
    # Given: a signSGD job with its server step η
    job = fl_job(
        enterprise,
        cohort_size=3,
        min_reports=3,
        compression="signsgd",
        strategy_options={"server_learning_rate": 0.01},
    )
    round_, who = open_round(job, workers(3))
    w0 = model_version_read(model_version=latest_version(job=job))
    assert {p.invite["compression"]["scheme"] for p in round_.participations.all()} == {"signsgd"}
    assert round_.participations.first().invite["upload"]["total_bytes"] == 32 + 16 + 82
    # When: three clients send their signs (folded one at a time, each from the last checkpoint)
    payloads = {p: sign_encode(update) for p, update in _updates(who, 7).items()}
    _upload_all(job, who, payloads, django_capture_on_commit_callbacks)
    # Then: w + η · sign(Σ votes)
    vote = SignVote(D)
    for p in who:
        vote.fold(str(p), payloads[p])
    expected = (w0.astype(np.float64) + 0.01 * vote.finish().astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(
        model_version_read(model_version=latest_version(job=job)), expected
    )
    round_.refresh_from_db()
    assert (round_.status, round_.reports) == (RoundStatus.CLOSED, 3)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (lambda update: sign_encode(update), "expected b'TK' v1, got b'SG'"),  # another scheme
        (
            lambda update: TopKResidual(D).compress(update, k=10).encode() + bytes(8 * 55),
            "parameter 10",
        ),
        (
            lambda update: SparseUpdate(
                indices=np.arange(65, dtype=np.uint32),
                values=np.ones(65, np.float32),
                dimension=D + 1,
            ).encode(),
            f"d {D + 1}",
        ),
    ],
)
def test_a_malformed_payload_header_is_rejected_with_its_code_and_changes_nothing(
    enterprise, django_capture_on_commit_callbacks, tmp_path, payload, fragment
):
    # Given: a top-k round (k = 65) and an upload of the right size whose header is wrong
    job = fl_job(enterprise, cohort_size=2, min_reports=2, compression="topk", topk_fraction=0.1)
    round_, who = open_round(job, workers(2))
    participation_id, worker = next(iter(who.items()))
    participation = Participation.objects.for_tenant(enterprise).get(pk=participation_id)
    data = compressed_body(payload(np.ones(D, np.float32)), samples=1)
    data = data[: 32 + encoded_bytes("topk", D, k=65)].ljust(32 + encoded_bytes("topk", D, k=65))
    # When
    with django_capture_on_commit_callbacks(execute=True):
        upload_id, done = Uploader(worker, participation).send(data)
    # Then: 422 bad_encoding with the reason; nothing folded, the chunks deleted
    assert done.status_code == 422, done.content
    rejection = done.json()["rejection"]
    assert rejection["code"] == "bad_encoding"
    assert fragment in rejection["message"]
    upload = UpdateUpload.objects.for_tenant(enterprise).get(pk=upload_id)
    assert upload.status == UploadStatus.REJECTED
    round_ = Round.objects.for_tenant(enterprise).get(pk=round_.pk)
    assert (round_.status, round_.reports, round_.fold_checkpoint_key) == (RoundStatus.OPEN, 0, "")
    participation.refresh_from_db()
    assert (participation.status, participation.rejection_code) == ("rejected", "bad_encoding")
    assert stored(tmp_path, "fl-uploads") == []
    assert latest_version(job=job).version == 0


def test_int8_updates_are_decoded_for_the_median_and_q_ffl(
    enterprise, django_capture_on_commit_callbacks
):
    # Given: int8 jobs aggregated at close from the stored payloads
    pool = workers(3)
    for strategy, options in (("median", {}), ("qffl", {"q": 1.0})):
        job = fl_job(
            enterprise,
            cohort_size=3,
            min_reports=3,
            compression="int8",
            server_strategy=strategy,
            strategy_options=options,
        )
        round_, who = open_round(job, pool)
        w0 = model_version_read(model_version=latest_version(job=job))
        updates = _updates(who, 8)
        payloads = {p: int8_encode(updates[p], seed=p) for p in who}
        # When
        samples = _upload_all(job, who, payloads, django_capture_on_commit_callbacks)
        # Then: the rule ran over the decoded updates
        decoded = {p: int8_decode(payloads[p]) for p in sorted(who)}
        if strategy == "median":
            aggregate = coordinate_median(np.stack(list(decoded.values())))
            expected = FedAvg().step(weights=w0, mean_delta=aggregate).astype(np.float32)
        else:
            fold = QFedAvgFold(w0, q=1.0, client_learning_rate=job.fl_config.learning_rate)
            for p, update in decoded.items():
                fold.fold(str(p), update, 1.0 / samples[p])  # loss sum 1.0 over its samples
            expected = fold.finish()
        version = latest_version(job=job)
        assert version.version == 1, strategy
        np.testing.assert_allclose(model_version_read(model_version=version), expected, atol=1e-7)


def test_an_async_int8_update_folds_with_its_staleness_weight(
    enterprise, django_capture_on_commit_callbacks
):
    # Given: buffered async with K = 1, staleness bound 1, polynomial weighting, int8 uploads
    job = fl_job(
        enterprise,
        cohort_size=2,
        min_reports=1,
        mode="async",
        buffer_size=1,
        staleness_bound=1,
        staleness_weighting="polynomial",
        rounds=10,
        compression="int8",
    )
    round_, who = open_round(job, workers(2))
    fast, slow = list(who)
    payload = int8_encode(np.full(D, 0.5, np.float32), seed=1)  # on the grid: decodes exactly
    with django_capture_on_commit_callbacks(execute=True):
        Uploader(who[fast], Participation.objects.for_tenant(enterprise).get(pk=fast)).send(
            compressed_body(payload, samples=4)
        )
    w1 = model_version_read(model_version=latest_version(job=job))
    # When: the slow client of round 1 reports against version 0
    with django_capture_on_commit_callbacks(execute=True):
        Uploader(who[slow], Participation.objects.for_tenant(enterprise).get(pk=slow)).send(
            compressed_body(int8_encode(np.full(D, 2.0, np.float32), seed=2), samples=4),
            base_version=0,
        )
    # Then: version 2 = w1 + 2^-0.5 · its decoded update (FedBuff's discounted step)
    assert latest_version(job=job).version == 2
    np.testing.assert_allclose(
        model_version_read(model_version=latest_version(job=job)), w1 + 2.0 * 2.0**-0.5, atol=1e-6
    )
