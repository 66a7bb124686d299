"""FL rounds on the server: cohort selection and invites, chunked resumable uploads over HTTP,
the fold in (eager) Celery, closing exactly once with FedAvg, metering and credits, dropouts,
stragglers, deadlines, buffered-async staleness, and other tenants' tokens."""

from __future__ import annotations

import hashlib
import struct
from datetime import timedelta

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone

from billing.models import EntryKind, JournalEntry, UsageRecord
from billing.operations import balance_adjust
from jobs import dispatch
from jobs.fl_artifact_models import UpdateUpload, UploadStatus
from jobs.fl_models import Participation, ParticipationStatus, Round, RoundStatus
from jobs.models import JobEvent, JobStatus
from jobs.services import fl_rounds_invites
from jobs.services.fl_data import job_partition_shards, partition_sizes
from jobs.services.fl_rounds import round_close, round_open
from jobs.services.fl_rounds_end import MAX_FAILED_ROUNDS
from jobs.services.fl_rounds_sweep import round_sweep
from jobs.services.model_registry import latest_version, model_version_read
from tenants.tiers import Tier
from tests.factories import ContributorFactory, UserFactory, WorkerFactory
from tests.jobs.fl_helpers import fl_job

pytestmark = pytest.mark.django_db

D = 650  # logreg [64, 10]
CHUNK = 1024


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
def core(tenant, owner):
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return tenant


def workers(count: int, *, accounted: bool = False) -> list:
    """Online workers of distinct public contributors, each with its token; ``accounted``: each
    contributor has an account (protected cohorts admit few anonymous ones)."""
    made = []
    for _ in range(count):
        contributor = ContributorFactory(user=UserFactory() if accounted else None)
        worker = WorkerFactory(
            contributor=contributor, capabilities={"simd": True, "memory_mb": 4096}
        )
        worker.token = dispatch.worker_token_issue(contributor=worker.contributor)
        made.append(worker)
    return made


def body(update: np.ndarray, *, samples: int, loss_sum: float = 1.0, correct: int = 0) -> bytes:
    """An upload body: the kernel's v2 metrics header, then the update f32[d]."""
    update = np.asarray(update, dtype="<f4")
    norm = float(np.sqrt(np.sum(update.astype(np.float64) ** 2)))
    header = struct.pack("<IIdIId", 0, samples, loss_sum, correct, update.shape[0], norm)
    return header + update.tobytes()


class Uploader:
    """A worker's side of the upload protocol over the Django test client."""

    def __init__(self, worker, participation: Participation) -> None:
        self.client = Client(HTTP_AUTHORIZATION=f"Worker {worker.token}")
        self.participation = participation

    def create(self, data: bytes, *, chunk_size: int = CHUNK, base_version: int = 0):
        return self.client.post(
            "/fl/uploads/",
            {
                "participation": self.participation.pk,
                "total_bytes": len(data),
                "chunk_size": chunk_size,
                "sha256": hashlib.sha256(data).hexdigest(),
                "base_version": base_version,
            },
            content_type="application/json",
        )

    def put(self, upload_id: str, index: int, chunk: bytes, *, sha256: str | None = None):
        return self.client.put(
            f"/fl/uploads/{upload_id}/chunks/{index}",
            chunk,
            content_type="application/octet-stream",
            headers={"X-Chunk-SHA256": sha256 or hashlib.sha256(chunk).hexdigest()},
        )

    def send(
        self,
        data: bytes,
        *,
        only: list[int] | None = None,
        complete: bool = True,
        chunk_size: int = CHUNK,
        **kw,
    ):
        response = self.create(data, chunk_size=chunk_size, **kw)
        assert response.status_code == 201, response.content
        upload_id = response.json()["upload"]
        for index in range(response.json()["chunk_count"]):
            if only is None or index in only:
                chunk = data[index * chunk_size : (index + 1) * chunk_size]
                assert self.put(upload_id, index, chunk).status_code == 200
        if complete:
            return upload_id, self.client.post(f"/fl/uploads/{upload_id}/complete")
        return upload_id, None


def stored(tmp_path, prefix: str) -> list[str]:
    """Objects under a storage prefix (the tests' media directory)."""
    root = tmp_path / "media" / prefix
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def shard_size(job, participation_id: int) -> int:  # noqa: ANN001
    """The real size of the partition client a participation was invited to train."""
    participation = Participation.objects.for_tenant(job.tenant).get(pk=participation_id)
    return partition_sizes(job)[participation.invite["data"]["client_index"]]


def participations(round_: Round) -> list[Participation]:
    return list(round_.participations.select_related("worker").order_by("pk"))


def open_round(job, pool: list) -> tuple[Round, dict]:
    invitations = round_open(job=job)
    assert invitations
    round_ = Round.objects.for_tenant(job.tenant).get(job=job, status=RoundStatus.OPEN)
    by_worker = {str(worker.pk): worker for worker in pool}
    return round_, {p.pk: by_worker[str(p.worker_id)] for p in participations(round_)}


def test_round_open_selects_eligible_workers_and_builds_invites(core, other_tenant):
    # Given: three eligible workers, one offline, one banned, one without SIMD, and one of
    # another tenant's private pool
    job = fl_job(core, cohort_size=2, over_selection=1.5, min_reports=2, seed=11)
    pool = workers(3)
    WorkerFactory(is_online=False)
    WorkerFactory(is_banned=True)
    WorkerFactory(capabilities={"simd": False})
    WorkerFactory(contributor=ContributorFactory(pool_tenant=other_tenant))
    # When
    invitations = round_open(job=job)
    # Then: ceil(2 × 1.5) = 3 invited, all eligible, one participation each
    assert len(invitations) == 3
    assert {i.worker_id for i in invitations} == {str(w.pk) for w in pool}
    round_ = Round.objects.for_tenant(core).get(job=job)
    assert (round_.number, round_.cohort_size, round_.status) == (1, 3, RoundStatus.OPEN)
    assert round_.deadline - round_.started_at <= timedelta(
        seconds=job.fl_config.round_deadline_seconds
    )
    assert round_.deadline > timezone.now()
    payload = invitations[0].payload
    version = latest_version(job=job)
    assert payload["type"] == "worker.round_invite"
    assert payload["model"] == {
        "version": 0,
        "sha256": version.sha256,
        "url": f"/weights/{version.sha256}.f32",
        "kernel": "logreg",
        "sizes": [64, 10],
        "parameter_count": D,
    }
    assert payload["upload"] == {"url": "/fl/uploads/", "chunk_bytes": 262144, "total_bytes": 2632}
    assert payload["data"]["client_index"] in range(job.fl_config.partition_clients)
    assert len({i.payload["data"]["client_index"] for i in invitations}) == 3
    # And: a second open while one is open does nothing
    assert round_open(job=job) == []


def test_round_closes_once_with_the_fedavg_of_the_uploads_and_is_charged_once(
    core, django_capture_on_commit_callbacks, tmp_path
):
    # Given: a round of three on a Dirichlet partition (unequal shards)
    job = fl_job(
        core,
        cohort_size=3,
        min_reports=3,
        rounds=5,
        partition="dirichlet",
        dirichlet_alpha=0.5,
        partition_clients=10,
    )
    pool = workers(3)
    round_, who = open_round(job, pool)
    w0 = model_version_read(model_version=latest_version(job=job))
    rng = np.random.default_rng(3)
    updates = {p: rng.normal(0, 0.01, D).astype(np.float32) for p in who}
    # Each declares its shard's real size, the fold weight
    samples = {p: shard_size(job, p) for p in who}
    assert len(set(samples.values())) > 1
    # When: each uploads its update in chunks; the folds run in Celery
    with django_capture_on_commit_callbacks(execute=True):
        for participation_id, worker in who.items():
            participation = Participation.objects.for_tenant(core).get(pk=participation_id)
            data = body(updates[participation_id], samples=samples[participation_id], loss_sum=2.0)
            _, done = Uploader(worker, participation).send(data)
            assert done.status_code == 202, done.content
    # Then: closed once, version 1 = w0 + the sample-weighted mean of the updates
    round_.refresh_from_db()
    assert (round_.status, round_.reports, round_.dropouts) == (RoundStatus.CLOSED, 3, 0)
    total = sum(samples.values())
    expected = (
        w0.astype(np.float64) + sum(samples[p] * updates[p].astype(np.float64) for p in who) / total
    )
    version = latest_version(job=job)
    assert version.version == 1
    assert version.round_id == round_.pk
    np.testing.assert_allclose(model_version_read(model_version=version), expected, atol=1e-6)
    assert round_.metrics["train_loss"] == pytest.approx(6.0 / total)
    assert round_.metrics["participants"] == 3
    assert round_.bytes_up == 3 * 2632
    # And: the updates' chunks and the fold's checkpoints are gone once the version is written
    assert stored(tmp_path, "fl-uploads") == []
    assert stored(tmp_path, f"fl-rounds/{core.pk}/{job.pk}/1") == []
    assert round_.bytes_down == 3 * 4 * D
    # And: charged once, credits for the three contributors, the next round open
    assert UsageRecord.objects.for_tenant(core).filter(job=job).count() == 1
    awards = JournalEntry.objects.filter(kind=EntryKind.CREDIT_AWARD)
    assert sorted(e.idempotency_key.rsplit(":", 1)[1] for e in awards) == sorted(
        str(worker.contributor_id) for worker in who.values()
    )
    assert Participation.objects.for_tenant(core).filter(round=round_, included=True).count() == 3
    assert Round.objects.for_tenant(core).get(job=job, number=2).status == RoundStatus.OPEN
    # And: closing again changes nothing
    with django_capture_on_commit_callbacks(execute=True):
        round_close(round_id=round_.pk)
    assert UsageRecord.objects.for_tenant(core).filter(job=job).count() == 1
    assert latest_version(job=job).version == 1
    assert Round.objects.for_tenant(core).filter(job=job).count() == 2


def test_resume_after_a_partial_upload_and_duplicate_chunks(
    core, django_capture_on_commit_callbacks
):
    job = fl_job(core, cohort_size=1, min_reports=1)
    (worker,) = workers(1)
    _, who = open_round(job, [worker])
    participation = Participation.objects.for_tenant(core).get(pk=next(iter(who)))
    data = body(np.full(D, 0.5, np.float32), samples=4)
    uploader = Uploader(worker, participation)
    # Given: chunks 0 and 2 of 3 sent, then the connection dropped
    upload_id, _ = uploader.send(data, only=[0, 2], complete=False)
    # When: the worker reconnects and asks what is stored
    state = uploader.client.get(f"/fl/uploads/{upload_id}").json()
    assert state["chunks_received"] == [0, 2]
    assert state["chunk_count"] == 3
    again = uploader.create(data)
    assert again.status_code == 201
    assert again.json()["upload"] == upload_id
    # Then: completing early is refused, a duplicate chunk is a no-op
    assert uploader.client.post(f"/fl/uploads/{upload_id}/complete").status_code == 400
    duplicate = uploader.put(upload_id, 0, data[:CHUNK])
    assert duplicate.status_code == 200
    assert duplicate.json() == {"chunk": 0, "stored": False}
    other_bytes = uploader.put(upload_id, 0, bytes(CHUNK))
    assert other_bytes.status_code == 409
    with django_capture_on_commit_callbacks(execute=True):
        assert uploader.put(upload_id, 1, data[CHUNK : 2 * CHUNK]).json()["stored"] is True
        assert uploader.client.post(f"/fl/uploads/{upload_id}/complete").status_code == 202
    assert UpdateUpload.objects.for_tenant(core).get(pk=upload_id).status == UploadStatus.FOLDED
    np.testing.assert_allclose(
        model_version_read(model_version=latest_version(job=job)),
        model_version_read(model_version=job.model_versions.get(version=0)) + 0.5,
        atol=1e-6,
    )


def test_a_bad_chunk_checksum_or_length_is_refused_and_nothing_is_stored(core):
    job = fl_job(core, cohort_size=1, min_reports=1)
    (worker,) = workers(1)
    _, who = open_round(job, [worker])
    participation = Participation.objects.for_tenant(core).get(pk=next(iter(who)))
    data = body(np.zeros(D, np.float32), samples=4)
    uploader = Uploader(worker, participation)
    upload_id = uploader.create(data).json()["upload"]
    # When
    bad = uploader.put(upload_id, 0, data[:CHUNK], sha256="0" * 64)
    short = uploader.put(upload_id, 0, data[: CHUNK - 4])
    beyond = uploader.put(upload_id, 3, data[:CHUNK])
    # Then
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "checksum_mismatch")
    assert short.json()["error"]["code"] == "wrong_length"
    assert beyond.json()["error"]["code"] == "bad_index"
    assert UpdateUpload.objects.for_tenant(core).get(pk=upload_id).chunks == {}


def test_upload_limits_are_enforced_at_creation(core):
    job = fl_job(core, cohort_size=1, min_reports=1)
    (worker,) = workers(1)
    _, who = open_round(job, [worker])
    participation = Participation.objects.for_tenant(core).get(pk=next(iter(who)))
    uploader = Uploader(worker, participation)
    data = body(np.zeros(D, np.float32), samples=1)
    assert uploader.create(data + bytes(4)).json()["error"]["code"] == "wrong_length"
    too_big = uploader.create(data, chunk_size=256 * 1024 + 4)
    assert too_big.json()["error"]["code"] == "bad_chunk_size"
    assert uploader.create(data, chunk_size=1022).json()["error"]["code"] == "bad_chunk_size"
    assert not UpdateUpload.objects.for_tenant(core).exists()


def test_a_nan_update_is_rejected_with_its_reason(
    core, django_capture_on_commit_callbacks, tmp_path
):
    job = fl_job(core, cohort_size=2, min_reports=2)
    pool = workers(2)
    round_, who = open_round(job, pool)
    first = next(iter(who))
    participation = Participation.objects.for_tenant(core).get(pk=first)
    update = np.zeros(D, np.float32)
    update[100] = np.nan
    with django_capture_on_commit_callbacks(execute=True):
        upload_id, done = Uploader(who[first], participation).send(body(update, samples=3))
    assert done.status_code == 202  # the hash and header are right: the fold finds the NaN
    participation.refresh_from_db()
    assert (participation.status, participation.rejection_code) == ("rejected", "non_finite")
    upload = UpdateUpload.objects.for_tenant(core).get(pk=upload_id)
    assert (upload.status, upload.rejection_code) == (UploadStatus.REJECTED, "non_finite")
    round_.refresh_from_db()
    assert (round_.reports, round_.fold_checkpoint_key) == (0, "")
    assert stored(tmp_path, "fl-uploads") == []


def test_a_wrong_whole_sha256_rejects_the_upload(core, django_capture_on_commit_callbacks):
    job = fl_job(core, cohort_size=1, min_reports=1)
    (worker,) = workers(1)
    _, who = open_round(job, [worker])
    participation = Participation.objects.for_tenant(core).get(pk=next(iter(who)))
    data = body(np.zeros(D, np.float32), samples=2)
    uploader = Uploader(worker, participation)
    response = uploader.client.post(
        "/fl/uploads/",
        {
            "participation": participation.pk,
            "total_bytes": len(data),
            "chunk_size": CHUNK,
            "sha256": "1" * 64,
            "base_version": 0,
        },
        content_type="application/json",
    )
    upload_id = response.json()["upload"]
    for index in range(3):
        uploader.put(upload_id, index, data[index * CHUNK : (index + 1) * CHUNK])
    done = uploader.client.post(f"/fl/uploads/{upload_id}/complete")
    assert (done.status_code, done.json()["rejection"]["code"]) == (422, "sha256_mismatch")
    participation.refresh_from_db()
    assert participation.status == ParticipationStatus.REJECTED


def test_a_worker_leaving_is_a_dropout_and_its_late_update_a_straggler(
    core, django_capture_on_commit_callbacks
):
    # Given: three invited, two needed; one leaves mid-round
    job = fl_job(core, cohort_size=3, min_reports=2)
    pool = workers(3)
    round_, who = open_round(job, pool)
    ids = list(who)
    with django_capture_on_commit_callbacks(execute=True):
        for participation_id in ids[:2]:
            participation = Participation.objects.for_tenant(core).get(pk=participation_id)
            Uploader(who[participation_id], participation).send(
                body(np.ones(D, np.float32), samples=5)
            )
    # Then: the round closed with two; the third is a dropout
    round_.refresh_from_db()
    assert (round_.status, round_.reports, round_.dropouts) == (RoundStatus.CLOSED, 2, 1)
    leaver = Participation.objects.for_tenant(core).get(pk=ids[2])
    assert leaver.status == ParticipationStatus.DROPPED
    # When: it comes back and tries to upload
    response = Uploader(who[ids[2]], leaver).create(body(np.ones(D, np.float32), samples=5))
    # Then: refused as late, counted once as a straggler
    assert (response.status_code, response.json()["error"]["code"]) == (409, "round_closed")
    leaver.refresh_from_db()
    round_.refresh_from_db()
    assert (leaver.status, round_.stragglers) == (ParticipationStatus.LATE, 1)
    assert UsageRecord.objects.for_tenant(core).filter(job=job).count() == 1


def test_the_deadline_closes_a_round_with_min_reports_and_fails_one_below(
    core, django_capture_on_commit_callbacks, tmp_path
):
    # Given: min reports 2 of 3; only one reports
    job = fl_job(core, cohort_size=3, min_reports=2)
    pool = workers(3)
    round_, who = open_round(job, pool)
    first = next(iter(who))
    with django_capture_on_commit_callbacks(execute=True):
        Uploader(who[first], Participation.objects.for_tenant(core).get(pk=first)).send(
            body(np.ones(D, np.float32), samples=5)
        )
    round_.refresh_from_db()
    assert round_.status == RoundStatus.OPEN
    # And: a second invitee has sent one chunk when the deadline comes
    second = list(who)[1]
    half, _ = Uploader(who[second], Participation.objects.for_tenant(core).get(pk=second)).send(
        body(np.ones(D, np.float32), samples=5), only=[0], complete=False
    )
    assert len(stored(tmp_path, "fl-uploads")) == 3 + 1  # the folded update and the one chunk
    # When: the sweeper runs before and then after the deadline
    assert round_sweep(now=round_.deadline - timedelta(seconds=1)) == 0
    with django_capture_on_commit_callbacks(execute=True):
        round_sweep(now=round_.deadline + timedelta(seconds=1))
    # Then: failed (no version, no charge), its invitees dropped out, the next round open
    round_.refresh_from_db()
    assert (round_.status, round_.dropouts) == (RoundStatus.FAILED, 2)
    abandoned = UpdateUpload.objects.for_tenant(core).get(pk=half)
    assert (abandoned.status, abandoned.rejection_code) == (UploadStatus.REJECTED, "round_closed")
    assert stored(tmp_path, "fl-uploads") == []
    assert latest_version(job=job).version == 0
    assert not UsageRecord.objects.for_tenant(core).filter(job=job).exists()
    assert Round.objects.for_tenant(core).get(job=job, number=2).status == RoundStatus.OPEN
    # And: after MAX_FAILED_ROUNDS failed rounds the job fails
    for _ in range(MAX_FAILED_ROUNDS - 1):
        current = Round.objects.for_tenant(core).get(job=job, status=RoundStatus.OPEN)
        round_sweep(now=current.deadline + timedelta(seconds=1))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert JobEvent.objects.for_tenant(core).filter(job=job, kind="fl.failed").count() == 1
    assert not Round.objects.for_tenant(core).filter(job=job, status=RoundStatus.OPEN).exists()


def test_the_sweeper_opens_a_round_once_workers_come_online(core):
    job = fl_job(core, cohort_size=2, min_reports=1)
    assert round_open(job=job) == []  # nobody online: no round is opened
    assert not Round.objects.for_tenant(core).filter(job=job).exists()
    workers(2)
    assert round_sweep() == 1
    assert Round.objects.for_tenant(core).get(job=job).cohort_size == 2


def test_the_job_completes_at_its_round_budget(core, django_capture_on_commit_callbacks):
    job = fl_job(core, cohort_size=1, min_reports=1, rounds=2)
    (worker,) = workers(1)
    for number in (1, 2):
        round_, who = open_round(job, [worker]) if number == 1 else (None, None)
        round_ = Round.objects.for_tenant(core).get(job=job, number=number)
        participation = round_.participations.get()
        with django_capture_on_commit_callbacks(execute=True):
            Uploader(worker, participation).send(
                body(np.ones(D, np.float32), samples=2), base_version=number - 1
            )
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert latest_version(job=job).version == 2
    assert Round.objects.for_tenant(core).filter(job=job).count() == 2


def test_async_mode_folds_a_late_update_with_its_staleness_weight(
    core, django_capture_on_commit_callbacks
):
    # Given: buffered async, K = 1, staleness bound 1, polynomial weighting a = 0.5
    job = fl_job(
        core,
        cohort_size=2,
        min_reports=1,
        mode="async",
        buffer_size=1,
        staleness_bound=1,
        staleness_weighting="polynomial",
        rounds=10,
    )
    pool = workers(2)
    round_, who = open_round(job, pool)
    fast, slow = list(who)
    with django_capture_on_commit_callbacks(execute=True):
        Uploader(who[fast], Participation.objects.for_tenant(core).get(pk=fast)).send(
            body(np.ones(D, np.float32), samples=4)
        )
    assert latest_version(job=job).version == 1
    second = Round.objects.for_tenant(core).get(job=job, number=2)
    # When: the slow client of round 1 (trained on version 0) reports now
    w1 = model_version_read(model_version=latest_version(job=job))
    slow_participation = Participation.objects.for_tenant(core).get(pk=slow)
    with django_capture_on_commit_callbacks(execute=True):
        Uploader(who[slow], slow_participation).send(
            body(np.full(D, 2.0, np.float32), samples=4), base_version=0
        )
    # Then: it joined round 2's buffer (staleness 1) with weight 4 · 2^-0.5, and FedBuff's step
    # divides that discounted sum by the 4 examples: version 2 = w1 + 2^-0.5 · its update
    second.refresh_from_db()
    assert (second.status, second.reports) == (RoundStatus.CLOSED, 1)
    assert latest_version(job=job).version == 2
    np.testing.assert_allclose(
        model_version_read(model_version=latest_version(job=job)),
        w1 + 2.0 * 2.0**-0.5,
        atol=1e-6,
    )
    slow_participation.refresh_from_db()
    assert slow_participation.status == ParticipationStatus.REPORTED
    assert (slow_participation.folded_round_id, slow_participation.staleness) == (second.pk, 1)
    assert slow_participation.fold_weight == pytest.approx(4 * 2.0**-0.5)
    assert second.metrics["staleness_mean"] == 1.0


def test_another_tenants_worker_token_cannot_upload_to_this_round(core, other_tenant):
    job = fl_job(core, cohort_size=1, min_reports=1)
    (worker,) = workers(1)
    _, who = open_round(job, [worker])
    participation = Participation.objects.for_tenant(core).get(pk=next(iter(who)))
    data = body(np.zeros(D, np.float32), samples=1)
    upload_id, _ = Uploader(worker, participation).send(data, only=[0], complete=False)
    # Given: a worker of another tenant's private pool, with a valid token
    intruder = WorkerFactory(contributor=ContributorFactory(pool_tenant=other_tenant))
    intruder.token = dispatch.worker_token_issue(contributor=intruder.contributor)
    uploader = Uploader(intruder, participation)
    # When / then: not found everywhere, and nothing changes
    assert uploader.create(data).status_code == 404
    assert uploader.client.get(f"/fl/uploads/{upload_id}").status_code == 404
    assert uploader.put(upload_id, 1, data[CHUNK : 2 * CHUNK]).status_code == 404
    assert uploader.client.post(f"/fl/uploads/{upload_id}/complete").status_code == 404
    assert Client().get(f"/fl/uploads/{upload_id}").status_code == 401
    assert UpdateUpload.objects.for_tenant(core).get().chunks.keys() == {"0"}
    assert UpdateUpload.objects.for_tenant(other_tenant).count() == 0


def test_three_rounds_of_the_2nn_trained_by_the_kernel_on_digits(
    core, wasm_built, django_capture_on_commit_callbacks, monkeypatch
):
    """Workers fetch the weights over HTTP, train one epoch with the ABI v2 kernel in wasmtime
    and upload its output as is; each version is the FedAvg of the updates, and the loss falls."""
    import json
    from pathlib import Path

    from ccgsc_worker import abi
    from ccgsc_worker.kernel import KernelRunner

    build = Path(__file__).resolve().parents[2] / "wasm" / "build"
    entry = {
        k["name"]: k for k in json.loads((build / "manifest.json").read_text())["training_kernels"]
    }["mlp"]
    runner = KernelRunner(
        (build / entry["file"]).read_bytes(),
        entry["sha256"],
        limits=abi.limits_for("train", entry["limits"]),
    )
    sizes = [64, 200, 200, 10]
    job = fl_job(
        core,
        model_kernel="mlp",
        model_sizes=sizes,
        partition="iid",
        shards_per_client=None,
        partition_clients=6,
        cohort_size=3,
        min_reports=3,
        rounds=3,
        learning_rate=0.1,
        seed=2017,
    )
    shards = job_partition_shards(job)  # the public shards the site serves
    pool = workers(3)
    sent: dict[int, dict] = {}  # what the consumer would forward, by participation
    monkeypatch.setattr(fl_rounds_invites, "SEND_INVITES", True)
    monkeypatch.setattr(
        fl_rounds_invites.realtime,
        "send_on_commit",
        lambda channel, payload: sent.setdefault(payload["participation"], payload),
    )
    round_open(job=job)
    losses = []
    for number in (1, 2, 3):
        round_ = Round.objects.for_tenant(core).get(job=job, number=number)
        base = latest_version(job=job)
        w = model_version_read(model_version=base)
        expected_sum = np.zeros(w.shape[0], np.float64)
        total = 0
        with django_capture_on_commit_callbacks(execute=True):
            for participation in participations(round_):
                worker = next(x for x in pool if x.pk == participation.worker_id)
                payload = sent[participation.pk]
                assert payload["round"] == number
                uploader = Uploader(worker, participation)
                fetched = uploader.client.get(payload["model"]["url"])
                weights = b"".join(fetched.streaming_content)
                assert hashlib.sha256(weights).hexdigest() == payload["model"]["sha256"]
                x, y, _ = shards[payload["data"]["client_index"]]
                output = runner.run(
                    abi.encode_train_input(
                        op="train",
                        sizes=sizes,
                        weights=weights,
                        x=x,
                        y=y,
                        batch_size=10,
                        seed=payload["seed"],
                        learning_rate=payload["hyperparameters"]["learning_rate"],
                    )
                )
                result = abi.decode_train_output(output)
                assert result.ok
                expected_sum += result.samples * np.frombuffer(result.update, "<f4")
                total += result.samples
                _, done = uploader.send(output, chunk_size=64 * 1024, base_version=base.version)
                assert done.status_code == 202, done.content
        round_.refresh_from_db()
        assert round_.status == RoundStatus.CLOSED
        losses.append(round_.metrics["train_loss"])
        np.testing.assert_allclose(
            model_version_read(model_version=latest_version(job=job)),
            w + expected_sum / total,
            atol=1e-6,
        )
    assert losses[2] < losses[1] < losses[0]
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED


def test_a_round_the_balance_cannot_cover_is_not_opened_and_the_job_pauses(
    core, owner, django_capture_on_commit_callbacks
):
    job = fl_job(core, cohort_size=1, min_reports=1)
    workers(1)
    balance_adjust(tenant=core, amount_cents=-5000, actor=owner, reason="spent", promotional=True)
    with django_capture_on_commit_callbacks(execute=True):
        assert round_open(job=job) == []
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED
    assert "cannot cover" in job.status_reason
    assert not Round.objects.for_tenant(core).filter(job=job).exists()


def test_a_duplicated_fold_task_counts_the_update_once(core, django_capture_on_commit_callbacks):
    from jobs.services.fl_rounds_fold import update_fold

    job = fl_job(core, cohort_size=2, min_reports=2)
    pool = workers(2)
    round_, who = open_round(job, pool)
    first = next(iter(who))
    with django_capture_on_commit_callbacks(execute=True):
        upload_id, _ = Uploader(
            who[first], Participation.objects.for_tenant(core).get(pk=first)
        ).send(body(np.ones(D, np.float32), samples=5))
        # When: the sweeper's re-queue runs after the original
        assert update_fold(upload_id=upload_id) == UploadStatus.FOLDED
    # Then
    round_.refresh_from_db()
    assert (round_.status, round_.reports, round_.stragglers) == (RoundStatus.OPEN, 1, 0)
    assert round_.fold_checkpoint_key.endswith("fold-000001.ckpt")
    # And: a second upload for the same participation is the same upload, not a new one
    again = Uploader(who[first], Participation.objects.for_tenant(core).get(pk=first)).create(
        body(np.ones(D, np.float32), samples=5)
    )
    assert again.json()["upload"] == upload_id
    assert again.json()["status"] == UploadStatus.FOLDED


def test_each_invitee_is_sent_its_invite_once_on_its_own_channel(core, monkeypatch):
    sent = []
    monkeypatch.setattr(
        fl_rounds_invites.realtime, "send_on_commit", lambda *args: sent.append(args)
    )
    job = fl_job(core, cohort_size=1, min_reports=1)
    workers(1)
    invitations = round_open(job=job)
    assert len(invitations) == 1
    assert sent == [(invitations[0].channel_name, invitations[0].payload)]


def test_rounds_record_epsilon_and_a_spent_budget_completes_the_job(
    core, django_capture_on_commit_callbacks
):
    # given a DP job (z = 5, q = 1, δ = 1e-5) whose ε allows exactly two rounds of one client
    from jobs.privacy import epsilon_spent

    def rdp(rounds: int) -> float:
        return epsilon_spent(
            noise_multiplier=5.0, sampling_probability=1.0, rounds=rounds, delta=1e-5
        )

    job = fl_job(
        core,
        cohort_size=1,
        min_reports=1,
        rounds=5,
        differential_privacy=True,
        dp_epsilon=(rdp(2) + rdp(3)) / 2,
        dp_delta=1e-5,
        dp_noise_multiplier=5.0,
        dp_clip_norm=1.0,
    )
    assert job.fl_config.dp_rounds_allowed == 2
    (worker,) = workers(1, accounted=True)
    open_round(job, [worker])
    # when both rounds close with an update each
    for number in (1, 2):
        participation = Round.objects.for_tenant(core).get(job=job, number=number).participations
        with django_capture_on_commit_callbacks(execute=True):
            Uploader(worker, participation.get()).send(
                body(np.ones(D, np.float32) * 0.01, samples=2), base_version=number - 1
            )
    # then each closed round carries the accountant's cumulative ε
    spent = [
        r.epsilon_spent for r in Round.objects.for_tenant(core).filter(job=job).order_by("number")
    ]
    assert spent == pytest.approx([rdp(1), rdp(2)])
    # and the third round is never opened: the job completes with the budget's reason
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert "privacy budget is spent" in job.status_reason
    assert Round.objects.for_tenant(core).filter(job=job).count() == 2


def test_browser_pages_are_invited_beside_edge_workers_when_they_can_train(core):
    # given an FL job, an edge worker, a browser page with SIMD and memory, and a page
    # without SIMD (the kernels need it)
    from jobs.worker_models import WorkerKind

    job = fl_job(core, cohort_size=5, min_reports=1)
    (edge,) = workers(1)
    page = WorkerFactory(kind=WorkerKind.BROWSER, capabilities={"simd": True, "memory_mb": 4096})
    WorkerFactory(kind=WorkerKind.BROWSER, capabilities={"simd": False, "memory_mb": 4096})
    # when a round opens
    invitations = round_open(job=job)
    # then the edge worker and the capable page are invited, and nobody else
    assert sorted(i.worker_id for i in invitations) == sorted([str(edge.pk), str(page.pk)])
