"""Secure FL rounds end to end with real processes: Daphne, Celery (with beat), PostgreSQL, Redis,
four ``ccgsc-worker`` edge workers and a fifth client driven by the test over a real socket with
the same wire client the edge worker uses.

The kill is placed, not timed: the fifth client holds its masked input back, so the masked-input
phase cannot close; the test SIGKILLs one ``ccgsc-worker`` once its masked input is folded, then
lets the fifth client upload. The unmask request then goes to five, four answer, and the killed
worker's self mask is rebuilt from its neighbours' shares (its input stays in the sum). The fifth
client's update is a distinctive float pattern, so the test also searches PostgreSQL, the
storage, the Celery result backend (Redis) and every process's log for it, and for the four
workers' updates (recomputed here: training is deterministic), and finds none in the clear.
In the abort test the fifth client dies after advertising.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import websockets
from django.conf import settings
from django.db import connection

from billing.models import UsageRecord
from billing.operations import balance_adjust
from ccgsc_worker import protocol as edge
from ccgsc_worker.secagg.wire import WireClient, masked_body
from ccgsc_worker.training import RoundTrainer
from ccgsc_worker.transfer import Http, Response, upload_update
from jobs import dispatch, fl_shards, protocol
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.secagg_models import SecAggPhaseSet, SecAggRound
from jobs.services.model_registry import model_version_read
from tenants.tiers import Tier
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import contributors_accounted, workers_online
from tests.jobs.fl_helpers import fl_job

pytestmark = [pytest.mark.services, pytest.mark.slow]

D = 650
DISTINCT = (0.31415926 * np.sin(np.arange(D) * 0.7 + 0.1)).astype(np.float32)


class ScriptedClient(threading.Thread):
    """A secure-round client over a real socket that stops after ``stop_after`` (its socket
    closes as a killed process's would), uploading ``update`` if it gets that far; it holds its
    advertise until ``hold_advertise`` is set and its upload until ``hold_upload`` is."""

    def __init__(
        self,
        server_url: str,
        token: str,
        update: np.ndarray,
        stop_after: str,
        hold_upload: threading.Event | None = None,
        hold_advertise: threading.Event | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.server_url, self.token, self.update, self.stop_after = (
            server_url,
            token,
            update,
            stop_after,
        )
        self.hold_upload = hold_upload
        self.hold_advertise = hold_advertise
        self.reached: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        for _ in range(
            5
        ):  # a loaded server may refuse the first handshake: reconnect as workers do
            try:
                asyncio.run(self._session())
                return
            except (OSError, websockets.exceptions.InvalidHandshake, TimeoutError) as exc:
                self.error = exc
                if self.reached:
                    return
                time.sleep(1)
            except BaseException as exc:  # reported by the test
                self.error = exc
                return

    async def _session(self) -> None:
        url = self.server_url.replace("http://", "ws://") + "/ws/edge/"
        hello = edge.hello(
            self.token,
            client_version="test",
            capabilities={"cores": 1, "memory_mb": 1024, "simd": True, "metered": False},
            slots=0,
        )
        async with websockets.connect(url, open_timeout=30) as socket:
            self.error = None
            await socket.send(edge.encode_text(hello))
            wire: WireClient | None = None
            invite: dict = {}
            async for text in socket:
                message = edge.parse_server_message(text)
                kind = message["type"]
                if kind == "round_invite" and message.get("secagg"):
                    invite = message
                    wire = WireClient(
                        job=message["job"],
                        round_number=message["round"],
                        participation=message["participation"],
                        block=message["secagg"],
                        dimension=message["model"]["parameters"],
                    )
                    if self.hold_advertise is not None:
                        await asyncio.to_thread(self.hold_advertise.wait, 120)
                    await socket.send(edge.encode_text(wire.advertise()))
                    self.reached.append("advertise")
                    if self.stop_after == "advertise":
                        return
                elif kind == "secagg_keys" and wire is not None:
                    await socket.send(edge.encode_text(wire.on_keys(message)))
                    self.reached.append("share")
                elif kind == "secagg_ciphertexts" and wire is not None:
                    wire.on_ciphertexts(message)
                    if self.hold_upload is not None:
                        await asyncio.to_thread(self.hold_upload.wait, 120)
                    header = struct.pack("<IIdIId", 0, 10, 1.0, 5, D, 0.0)
                    body = masked_body(header, wire.mask_update(self.update))
                    outcome = await asyncio.to_thread(
                        upload_update,
                        Http(self.server_url, self.token),
                        url=invite["upload"]["url"],
                        participation=invite["participation"],
                        base_version=invite["model"]["version"],
                        body=body,
                        chunk_bytes=invite["upload"]["chunk_bytes"],
                        time_left=lambda: 60.0,
                    )
                    self.reached.append(f"masked_input:{outcome[0]}")
                    if self.stop_after == "masked_input":
                        return
                elif kind == "secagg_unmask" and wire is not None:
                    await socket.send(edge.encode_text(wire.on_unmask(message)))
                    self.reached.append("unmask")
                    return


def _core_tenant(tenant, owner):  # noqa: ANN001, ANN202
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return tenant


def _secure_job(tenant, **fields):  # noqa: ANN001, ANN003, ANN202
    defaults = {
        "dataset": "digits",
        "partition": "iid",
        "partition_clients": 5,
        "rounds": 1,
        "cohort_size": 5,
        "min_reports": 3,
        "round_deadline_seconds": 30,
        "local_epochs": 1,
        "learning_rate": 0.1,
        "secure_aggregation": True,
        "seed": 11,
    }
    return fl_job(tenant, **{**defaults, **fields})


class _Registry:
    """Serves what ``RoundTrainer`` fetches from the database and the build, after the job
    ended (the site serves weights and shards of running jobs only)."""

    def __init__(self, job, version: ModelVersion) -> None:  # noqa: ANN001
        self.job, self.version = job, version

    def request(self, method: str, path: str, **_: object) -> Response:
        from jobs.federated.client import DEFAULT_BUILD_DIR

        if path.startswith("/weights/"):
            weights = model_version_read(model_version=self.version).astype("<f4")
            return Response(200, weights.tobytes())
        if path.startswith("/fl/shards/"):
            index = int(path.rsplit("/", 1)[1].split(".")[0])
            return Response(200, fl_shards.job_shards(self.job)[index].body)
        entry = next(
            e
            for e in fl_shards._training_manifest().values()
            if e["sha256"] in path  # noqa: SLF001
        )
        return Response(200, (DEFAULT_BUILD_DIR / entry["file"]).read_bytes())


def _retrained_update(registry: _Registry, participation: Participation) -> np.ndarray:
    """A worker's update recomputed from its stored invite (the kernel is deterministic)."""
    event = participation.invite
    sha = fl_shards.training_kernel_sha256(event["model"]["kernel"])
    invite = protocol.round_invite(event=event, kernel_sha256=sha, deadline_ms=60_000)
    trainer = RoundTrainer(registry)  # type: ignore[arg-type]
    wasm = trainer.fetch(invite["kernel"]["url"], sha256=sha)
    body = trainer.train(invite, wasm, time.monotonic() + 60)
    return np.frombuffer(body, dtype="<f4", offset=32).copy()


def _needles(update: np.ndarray) -> list[bytes]:
    """Byte windows of an update as it would look stored in the clear: float32 and float64
    runs of eight coordinates, and the decimal text of its larger values."""
    found = []
    values = np.asarray(update, dtype=np.float32)
    for start in range(0, D - 8, 81):
        window = values[start : start + 8]
        if np.count_nonzero(window) == 8:
            found += [window.astype("<f4").tobytes(), window.astype("<f8").tobytes()]
    for value in values[np.abs(values) > 0.05][:5]:
        found.append(repr(float(value))[:10].encode())
    return found


def _haystacks() -> list[tuple[str, bytes]]:
    """Every text, bytea and JSON value of the FL tables, every object in storage, every value
    in the Celery result backend's Redis, and every process log of this run."""
    stacks: list[tuple[str, bytes]] = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name LIKE 'jobs_%%' "
            "AND data_type IN ('text', 'character varying', 'bytea', 'json', 'jsonb')"
        )
        for table, column, kind in cursor.fetchall():
            cast = "" if kind != "json" and kind != "jsonb" else "::text"
            cursor.execute(f'SELECT "{column}"{cast} FROM "{table}"')  # noqa: S608 - catalog names
            for (value,) in cursor.fetchall():
                if value is not None:
                    data = bytes(value) if kind == "bytea" else str(value).encode()
                    stacks.append((f"{table}.{column}", data))
    media = Path(settings.STORAGES["default"]["OPTIONS"]["location"])
    stacks += [(str(path), path.read_bytes()) for path in media.rglob("*") if path.is_file()]
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(count=1000):
        if client.type(key) == b"string":
            stacks.append((f"redis:{key!r}", client.get(key) or b""))
        elif client.type(key) == b"list":
            stacks += [(f"redis:{key!r}", item) for item in client.lrange(key, 0, -1)]
    logs = Path(__file__).resolve().parents[2] / "var" / "test-logs"
    stacks += [(str(path), path.read_bytes()) for path in logs.glob("*.log")]
    return stacks


def test_a_secure_round_of_edge_workers_survives_a_dropout_and_leaks_no_update(
    fc_stack, tenant, owner
):
    # given four edge workers and a fifth client that holds its masked input back
    _core_tenant(tenant, owner)
    workers = [fc_stack.edge_worker() for _ in range(4)]
    _, fifth_token = dispatch.contributor_create_anonymous()
    release = threading.Event()
    fifth = ScriptedClient(fc_stack.daphne.url, fifth_token, DISTINCT, "unmask", release)
    fifth.start()
    workers_online(5, fc_stack)
    contributors_accounted()
    # when a secure job of one round runs, and one worker is killed once its masked input is in
    job = _secure_job(tenant)
    victim = workers[0]
    victim_contributor = dispatch.worker_token_verify(token=victim.token).pk
    deadline = time.monotonic() + 90
    while (
        not Participation.objects.for_tenant(tenant)
        .filter(round__job=job, contributor_id=victim_contributor, status="reported")
        .exists()
    ):
        assert time.monotonic() < deadline, fc_stack.logs()
        time.sleep(0.1)
    victim.stop(kill=True)
    release.set()
    job = wait_for_job(job.pk, timeout_s=120, stack=fc_stack)
    # then the fifth client went through every phase, the killed worker was asked to unmask
    # but never answered, and the round closed with all five inputs
    assert fifth.error is None, fifth.error
    assert fifth.reached == ["advertise", "share", "masked_input:uploaded", "unmask"]
    assert victim.process.returncode == -9
    round_ = Round.objects.for_tenant(tenant).get(job=job)
    assert round_.status == RoundStatus.CLOSED
    assert round_.reports == 5
    secagg = SecAggRound.objects.for_tenant(tenant).get(round=round_)
    sets = {
        s.phase: s for s in SecAggPhaseSet.objects.for_tenant(tenant).filter(secagg_round=secagg)
    }
    assert [len(sets[p].members) for p in ("advertise", "share", "masked_input")] == [5, 5, 5]
    victim_client = next(
        int(c)
        for c, pid in secagg.clients.items()
        if Participation.objects.for_tenant(tenant).get(pk=pid).contributor_id == victim_contributor
    )
    assert victim_client in sets["masked_input"].members
    assert victim_client not in sets["unmask"].members  # its self mask came from shares
    assert len(sets["unmask"].members) == 4
    # and the new model is the FedAvg of the five clipped updates, to fixed-point precision
    participations = list(Participation.objects.for_tenant(tenant).filter(round=round_))
    edge_contributors = {dispatch.worker_token_verify(token=w.token).pk for w in workers}
    versions = ModelVersion.objects.for_tenant(tenant).filter(job=job).order_by("version")
    registry = _Registry(job, versions.first())
    updates = [
        _retrained_update(registry, p) if p.contributor_id in edge_contributors else DISTINCT
        for p in participations
    ]
    assert sum(u is DISTINCT for u in updates) == 1
    w0 = model_version_read(model_version=versions.first()).astype(np.float64)
    clipped = [np.clip(u.astype(np.float64), -secagg.bound, secagg.bound) for u in updates]
    np.testing.assert_allclose(
        model_version_read(model_version=versions.last()),
        w0 + np.mean(clipped, axis=0),
        atol=1e-6,
    )
    assert UsageRecord.objects.for_tenant(tenant).filter(job=job).count() == 1
    # and no update, the distinctive one or any worker's, is anywhere in the clear
    needles = [needle for update in updates for needle in _needles(update)]
    assert len(needles) > 40
    stacks = _haystacks()
    assert any(name.startswith("jobs_secaggmessage") for name, _ in stacks)
    leaks = [(name, needle) for name, data in stacks for needle in needles if needle in data]
    assert leaks == []


def test_a_secure_round_below_threshold_aborts_and_tells_its_participants(fc_stack, tenant, owner):
    # given four edge workers and a fifth client that dies after advertising its keys
    _core_tenant(tenant, owner)
    for _ in range(4):
        fc_stack.edge_worker()
    _, doomed_token = dispatch.contributor_create_anonymous()
    doomed = ScriptedClient(fc_stack.daphne.url, doomed_token, DISTINCT, "advertise")
    doomed.start()
    workers_online(5, fc_stack)
    contributors_accounted()
    # when a secure job that needs all five survivors runs
    job = _secure_job(tenant, secagg_min_survivors=5)
    deadline = time.monotonic() + 90
    round_ = None
    while time.monotonic() < deadline:
        round_ = Round.objects.for_tenant(tenant).filter(job=job, number=1).first()
        if round_ is not None and round_.status == RoundStatus.FAILED:
            break
        time.sleep(0.25)
    # then round 1 failed at the share phase with the reason, without a version or a charge
    assert round_ is not None
    assert round_.status == RoundStatus.FAILED, fc_stack.logs()
    assert round_.metrics["reason"] == "secure_aggregation"
    assert round_.metrics["detail"] == "4 clients shared keys, the minimum is 5"
    assert doomed.reached == ["advertise"]
    assert not ModelVersion.objects.for_tenant(tenant).filter(job=job, version__gt=0).exists()
    assert not UsageRecord.objects.for_tenant(tenant).filter(job=job).exists()
    # and the four workers were told (each logs the abort of its participation)
    told = 0
    wait_until = time.monotonic() + 20
    while time.monotonic() < wait_until and told < 4:
        told = sum(
            f"secure round {p} aborted" in w.log_path.read_text(errors="replace")
            for w in fc_stack.edge_workers
            for p in Participation.objects.for_tenant(tenant)
            .filter(round=round_)
            .values_list("pk", flat=True)
        )
        time.sleep(0.25)
    assert told == 4, fc_stack.logs()
    # and the job goes on with rounds that abort in turn (the fifth client is gone) until three
    # have failed, so nothing of it is still running when the test ends
    job = wait_for_job(job.pk, timeout_s=120, stack=fc_stack, status="failed")
    assert job.status_reason == "3 rounds failed"
    assert not ModelVersion.objects.for_tenant(tenant).filter(job=job, version__gt=0).exists()
