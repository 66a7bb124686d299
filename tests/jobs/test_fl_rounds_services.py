"""FL rounds with a real Celery worker on real PostgreSQL and Redis: a worker killed in the middle
of a fold loses nothing; a new one resumes from the round's last checkpoint.

The kill is placed, not timed: the worker runs with a start-up hook (``sitecustomize`` on its
path, test-only) that ends the process (``os._exit``, as a SIGKILL would: no clean-up, no ack,
no commit) the second time a fold is about to be checkpointed, after the update has been added in
memory. The sweeper's re-queue is the recovery path under test (a lost unacked message comes
back only after the broker's visibility timeout).
"""

from __future__ import annotations

import hashlib
import struct
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone

from billing.models import UsageRecord
from billing.operations import balance_adjust
from jobs import dispatch
from jobs.fl_artifact_models import UpdateUpload, UploadStatus
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.services.fl_data import partition_sizes
from jobs.services.fl_rounds import round_open
from jobs.services.fl_rounds_sweep import round_sweep
from jobs.services.model_registry import latest_version, model_version_read
from tenants.tiers import Tier
from tests.factories import WorkerFactory
from tests.jobs.fl_helpers import fl_job

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
D = 650
CHUNK = 1024
CRASH_HOOK = """
import os
from pathlib import Path

marker = Path(os.environ["CCGSC_TEST_FOLD_CRASH_MARKER"])
from jobs.aggregation import fold as _fold

_checkpoint = _fold.StreamingFold.checkpoint


def checkpoint(self, *args, **kwargs):
    calls = int(marker.read_text() or 0) + 1 if marker.exists() else 1
    marker.write_text(str(calls))
    if calls == 2:  # the second fold: added in memory, not yet checkpointed or committed
        os._exit(137)
    return _checkpoint(self, *args, **kwargs)


_fold.StreamingFold.checkpoint = checkpoint
"""


def _body(update: np.ndarray, samples: int) -> bytes:
    header = struct.pack("<IIdIId", 0, samples, 1.0, 0, D, float(np.linalg.norm(update)))
    return header + update.astype("<f4").tobytes()


def _upload(worker, token: str, participation: Participation, data: bytes) -> None:
    client = Client(HTTP_AUTHORIZATION=f"Worker {token}")
    created = client.post(
        "/fl/uploads/",
        {
            "participation": participation.pk,
            "total_bytes": len(data),
            "chunk_size": CHUNK,
            "sha256": hashlib.sha256(data).hexdigest(),
            "base_version": 0,
        },
        content_type="application/json",
    ).json()
    for index in range(created["chunk_count"]):
        chunk = data[index * CHUNK : (index + 1) * CHUNK]
        client.put(
            f"/fl/uploads/{created['upload']}/chunks/{index}",
            chunk,
            content_type="application/octet-stream",
            headers={"X-Chunk-SHA256": hashlib.sha256(chunk).hexdigest()},
        )
    assert client.post(f"/fl/uploads/{created['upload']}/complete").status_code == 202


def _wait(condition, what: str, process=None, limit_s: float = 90.0) -> None:  # noqa: ANN001
    """Poll until ``condition()`` (a wait for the worker, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    log = process.log_tail() if process is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


@pytest.fixture
def real_celery(celery_queue, tmp_path):
    """Celery workers (started by the test) with the crash hook, on this run's own queue."""
    from ccgsc_site.celery import app
    from tests.servers import CeleryWorker, server_env

    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(CRASH_HOOK)
    marker = tmp_path / "fold-calls"
    env = server_env(
        PYTHONPATH=f"{hook_dir}:{ROOT}:{ROOT / 'edge_worker'}",
        CCGSC_TEST_FOLD_CRASH_MARKER=str(marker),
    )
    previous = (app.conf.task_default_queue, app.conf.task_always_eager)
    app.conf.task_default_queue = celery_queue
    app.conf.task_always_eager = False
    started: list = []

    def start():  # noqa: ANN202
        worker = CeleryWorker(celery_queue, env=env)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(kill=True)
    app.conf.task_default_queue, app.conf.task_always_eager = previous


def test_a_celery_worker_killed_mid_fold_resumes_from_the_checkpoint(tenant, owner, real_celery):
    # Given: an FL Core tenant's round of two, and a Celery worker that dies in the second fold
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    job = fl_job(
        tenant,
        cohort_size=2,
        min_reports=2,
        partition="dirichlet",
        dirichlet_alpha=0.5,
        partition_clients=10,
    )
    pool = [WorkerFactory(capabilities={"simd": True}) for _ in range(2)]
    round_open(job=job)
    round_ = Round.objects.for_tenant(tenant).get(job=job)
    w0 = model_version_read(model_version=latest_version(job=job))
    rng = np.random.default_rng(5)
    parts = list(round_.participations.order_by("pk"))
    updates = [rng.normal(0, 0.01, D).astype(np.float32) for _ in parts]
    # Each declares its shard's real size (the cap), unequal on a Dirichlet partition
    sizes = partition_sizes(job)
    samples = [sizes[p.invite["data"]["client_index"]] for p in parts]
    tokens = {w.pk: dispatch.worker_token_issue(contributor=w.contributor) for w in pool}
    doomed = real_celery()
    # When: the first update is folded and checkpointed
    _upload(parts[0].worker, tokens[parts[0].worker_id], parts[0], _body(updates[0], samples[0]))
    _wait(
        lambda: (
            UpdateUpload.objects.for_tenant(tenant).filter(status=UploadStatus.FOLDED).count() == 1
        ),
        "the first fold",
        doomed,
    )
    # And: the worker dies while folding the second
    _upload(parts[1].worker, tokens[parts[1].worker_id], parts[1], _body(updates[1], samples[1]))
    _wait(lambda: doomed.process.poll() is not None, "the worker to die", doomed)
    # Then: the round still stands at its first checkpoint, the second update not folded
    round_.refresh_from_db()
    assert round_.status == RoundStatus.OPEN
    assert round_.reports == 1
    assert round_.fold_checkpoint_key.endswith("fold-000001.ckpt")
    second = UpdateUpload.objects.for_tenant(tenant).get(participation=parts[1])
    assert second.status == UploadStatus.COMPLETE
    # When: a new worker starts and the sweeper re-queues the lost fold
    survivor = real_celery()
    round_sweep(now=timezone.now() + timedelta(seconds=60))
    _wait(
        lambda: Round.objects.for_tenant(tenant).get(pk=round_.pk).status == RoundStatus.CLOSED,
        "the round to close",
        survivor,
    )
    # Then: the version is the FedAvg of both updates, the round charged once
    round_.refresh_from_db()
    assert round_.reports == 2
    expected = w0.astype(np.float64) + (
        samples[0] * updates[0].astype(np.float64) + samples[1] * updates[1].astype(np.float64)
    ) / sum(samples)
    version = latest_version(job=job)
    assert version.version == 1
    np.testing.assert_allclose(model_version_read(model_version=version), expected, atol=1e-6)
    assert UsageRecord.objects.for_tenant(tenant).filter(job=job).count() == 1
