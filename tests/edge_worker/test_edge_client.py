"""EdgeWorker without a network: back-off, outbox and resume, cancel, errors and real kernels.

Connections are replaced by a recording transport driven through the worker's transport seam
(attach / handle_message / detach); integration tests against the real server live elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ccgsc_worker import protocol as proto
from ccgsc_worker.client import (
    Backoff,
    EdgeWorker,
    KernelFetchError,
    KernelStore,
    Outbox,
    WorkerRejected,
    error_code_for,
    websocket_url,
)
from ccgsc_worker.kernel import (
    KernelFailed,
    KernelHashMismatch,
    KernelRejected,
    KernelRunner,
    KernelTimeout,
)
from ccgsc_worker.protocol import Assignment

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = ROOT / "wasm" / "build"
SERVER = "http://127.0.0.1:8000"
TOKEN = "w" * 40
WORKER_ID = str(uuid.UUID(int=1))


def aid(n: int) -> str:
    """A deterministic assignment id."""
    return str(uuid.UUID(int=1000 + n))


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict[str, Any]]:
    """The built kernels, building them first if needed."""
    subprocess.run([sys.executable, str(ROOT / "wasm" / "build.py"), "--quiet"], check=True)
    data = json.loads((BUILD_DIR / "manifest.json").read_text())
    return {k["name"]: k for k in data["kernels"]}


def wasm(manifest: dict[str, dict[str, Any]], name: str) -> bytes:
    """Bytes of a built kernel."""
    return (BUILD_DIR / manifest[name]["file"]).read_bytes()


class Recorder:
    """A transport that records what the worker sends."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []

    async def send(self, message: str | bytes, /) -> None:
        self.sent.append(message)

    def texts(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Decoded text messages, optionally of one type."""
        messages = [json.loads(m) for m in self.sent if isinstance(m, str)]
        return [m for m in messages if kind is None or m["type"] == kind]

    def results(self) -> list[tuple[dict[str, Any], bytes]]:
        """Decoded result frames."""
        return [proto.decode_result_frame(m) for m in self.sent if isinstance(m, bytes)]


def welcome(worker: str = WORKER_ID, **fields: Any) -> str:
    """A welcome message."""
    message = {
        "v": 1,
        "type": "welcome",
        "worker": worker,
        "contributor": str(uuid.UUID(int=2)),
        "heartbeat_ms": 10_000,
        "limits": {"max_json_bytes": 16384, "max_result_bytes": 1048576},
        "outstanding": [],
    }
    message.update(fields)
    return json.dumps(message)


def assign(
    n: int,
    *,
    name: str = "prime_count",
    sha256: str = "ab" * 32,
    lo: int = 0,
    hi: int = 100,
    params: list[float] | None = None,
) -> str:
    """An assign message for assignment ``aid(n)``."""
    return json.dumps(
        {
            "v": 1,
            "type": "assign",
            "assignment": aid(n),
            "job": str(uuid.UUID(int=3)),
            "task": n,
            "kernel": {
                "name": name,
                "version": "1.0.0",
                "sha256": sha256,
                "url": f"/kernels/{sha256}.wasm",
            },
            "input": {"lo": str(lo), "hi": str(hi), "seed": "0", "params": params or []},
            "lease_ms": 60_000,
            "work_units": hi - lo,
        }
    )


def msg(kind: str, **fields: Any) -> str:
    """Any server message."""
    return json.dumps({"v": 1, "type": kind, **fields})


def echo_executor(a: Assignment) -> bytes:
    """Returns the task's range as two u64s, without running a kernel."""
    return struct.pack("<QQ", a.lo, a.hi)


class Gate:
    """An async executor that blocks each task until released."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, a: Assignment) -> bytes:
        self.started.append(a.id)
        await self.release.wait()
        return echo_executor(a)


async def connected(worker: EdgeWorker, **welcome_fields: Any) -> Recorder:
    """Attach a recorder and complete the handshake."""
    transport = Recorder()
    await worker.attach(transport)
    await worker.handle_message(welcome(**welcome_fields))
    return transport


def inline(
    executor: Callable[[Assignment], Any], concurrency: int = 2, **kwargs: Any
) -> EdgeWorker:
    """A worker whose tasks run in the event loop."""
    return EdgeWorker(SERVER, TOKEN, concurrency, executor=executor, inline_executor=True, **kwargs)


# -- pure pieces ---------------------------------------------------------------------------


def test_backoff_bounds_and_reset() -> None:
    nominal = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    low, high = Backoff(rng=lambda: 0.0), Backoff(rng=lambda: 1.0)
    assert [low.next_delay() for _ in nominal] == [n / 2 for n in nominal]
    assert [high.next_delay() for _ in nominal] == nominal
    jittered = Backoff()
    for n in nominal:
        delay = jittered.next_delay()
        assert n / 2 <= delay <= n <= 30
    for _ in range(100):
        assert jittered.next_delay() <= 30
    jittered.reset()
    assert jittered.attempt == 0
    assert jittered.nominal() == 0.5


def test_outbox_keeps_order_until_acked() -> None:
    box = Outbox(limit=3)
    for n in range(3):
        assert box.put(aid(n), bytes([n])) == []
    assert [a for a, _ in box.frames()] == [aid(0), aid(1), aid(2)]
    assert box.ack(aid(1)) is True
    assert box.ack(aid(1)) is False  # a duplicate ack is fine
    assert box.put(aid(3), b"3") == []
    assert box.put(aid(4), b"4") == [aid(0)]  # over the limit the oldest goes
    assert list(box) == [aid(2), aid(3), aid(4)]
    assert aid(2) in box
    assert len(box) == 3


def test_websocket_url() -> None:
    assert websocket_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws/edge/"
    assert websocket_url("https://ccgsc.example.org/") == "wss://ccgsc.example.org/ws/edge/"
    assert websocket_url("https://example.org/ccgsc") == "wss://example.org/ccgsc/ws/edge/"
    for bad in ("ftp://example.org", "example.org", "ws://example.org"):
        with pytest.raises(ValueError, match="server URL"):
            websocket_url(bad)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        EdgeWorker(SERVER, TOKEN, 0)
    with pytest.raises(ValueError, match="inline_executor"):
        EdgeWorker(SERVER, TOKEN, 1, inline_executor=True)


def test_error_codes_from_real_kernel_failures(manifest: dict[str, dict[str, Any]]) -> None:
    prime = wasm(manifest, "prime_count")
    with pytest.raises(KernelHashMismatch) as mismatch:
        KernelRunner(prime, manifest["montecarlo_pi"]["sha256"])
    assert error_code_for(mismatch.value) == "hash_mismatch"

    broken = prime[:-7]
    with pytest.raises(KernelRejected) as rejected:
        KernelRunner(broken, hashlib.sha256(broken).hexdigest())
    assert error_code_for(rejected.value) == "kernel_rejected"

    sweep = KernelRunner(wasm(manifest, "param_sweep"), manifest["param_sweep"]["sha256"])
    with pytest.raises(KernelFailed) as failed:
        sweep.run(
            proto.Assignment(
                aid(0), proto.KernelRef("param_sweep", "1", "0" * 64, "/"), 0, 10, 0, (1.0,), 1, 10
            ).input_bytes()
        )  # wrong parameter count: bad input
    assert error_code_for(failed.value) == "kernel_failed"

    runner = KernelRunner(prime, manifest["prime_count"]["sha256"], timeout=0.02)
    with pytest.raises(KernelTimeout) as timed_out:
        runner.run(struct.pack("<QQQII", 0, 10**12, 0, 0, 0))
    assert error_code_for(timed_out.value) == "timeout"

    assert error_code_for(KernelFetchError("down")) == "internal"
    assert error_code_for(RuntimeError("bug")) == "internal"


# -- session state machine -----------------------------------------------------------------


async def test_hello_then_resume_after_the_first_welcome() -> None:
    worker = inline(echo_executor, concurrency=3)
    first = Recorder()
    await worker.attach(first)
    hello = first.texts()[0]
    assert hello["type"] == "hello"
    assert hello["token"] == TOKEN
    assert hello["client"]["kind"] == "edge"
    assert hello["slots"] == 3
    assert hello["capabilities"]["simd"] is True
    assert hello["capabilities"]["cores"] >= 1
    assert hello["resume"] is None
    await worker.handle_message(welcome())
    assert worker.connected
    assert worker.worker_id == WORKER_ID
    worker.detach()
    second = Recorder()
    await worker.attach(second)
    assert second.texts()[0]["resume"] == WORKER_ID
    await worker.aclose()


async def test_results_are_resent_after_reconnect_until_acked() -> None:
    worker = inline(echo_executor)
    first = await connected(worker)
    await worker.handle_message(assign(1, lo=5, hi=9))
    assert await worker.wait_idle(5)
    [(header, output)] = first.results()
    assert header["assignment"] == aid(1)
    assert output == struct.pack("<QQ", 5, 9)
    assert worker.stats.tasks_completed == 1
    assert aid(1) in worker.outbox

    worker.detach()  # the connection drops before the ack
    await worker.handle_message(assign(2, lo=1, hi=2))  # finishes while disconnected
    assert await worker.wait_idle(5)
    second = Recorder()
    await worker.attach(second)
    assert second.sent[1:] == []  # nothing but hello before welcome
    await worker.handle_message(welcome(outstanding=[aid(1), aid(2)]))
    assert [h["assignment"] for h, _ in second.results()] == [aid(1), aid(2)]
    assert all(isinstance(m, bytes) for m in second.sent[1:3])  # right after welcome
    assert worker.stats.results_resent == 2

    await worker.handle_message(msg("ack", assignment=aid(1), status="duplicate"))
    await worker.handle_message(msg("ack", assignment=aid(1), status="duplicate"))
    await worker.handle_message(msg("ack", assignment=aid(2), status="late"))
    assert len(worker.outbox) == 0
    assert worker.stats.results_acked == 2
    assert worker.stats.acks == {"duplicate": 1, "late": 1}

    worker.detach()
    third = await connected(worker)
    assert third.results() == []
    await worker.aclose()


async def test_reassigned_finished_assignment_is_answered_from_the_outbox() -> None:
    worker = inline(echo_executor)
    transport = await connected(worker)
    await worker.handle_message(assign(1))
    assert await worker.wait_idle(5)
    await worker.handle_message(assign(1))
    assert await worker.wait_idle(5)
    assert [h["assignment"] for h, _ in transport.results()] == [aid(1), aid(1)]
    assert worker.stats.tasks_completed == 1
    await worker.aclose()


async def test_cancel_drops_queued_and_silences_running() -> None:
    gate = Gate()
    events: list[str] = []
    worker = inline(gate, concurrency=1, on_event=lambda name, info: events.append(name))
    transport = await connected(worker)
    await worker.handle_message(assign(1))
    await worker.handle_message(assign(2))
    await asyncio.sleep(0)
    assert gate.started == [aid(1)]
    assert worker.active == {aid(1): "running", aid(2): "queued"}

    await worker.handle_message(msg("cancel", assignment=aid(2), reason="job_paused"))
    assert worker.active == {aid(1): "running"}
    await worker.handle_message(msg("cancel", assignment=aid(1), reason="job_cancelled"))
    await worker.handle_message(msg("cancel", assignment=aid(1), reason="job_cancelled"))
    gate.release.set()
    assert await worker.wait_idle(5)
    assert gate.started == [aid(1)]  # the queued one never ran
    assert transport.results() == []
    assert transport.texts("error") == []
    assert len(worker.outbox) == 0
    assert worker.stats.cancelled == 2
    assert worker.stats.tasks_completed == 0
    assert "discarded" in events
    assert "dropped" in events
    await worker.aclose()


async def test_welcome_drops_queued_assignments_the_server_no_longer_expects() -> None:
    gate = Gate()
    worker = inline(gate, concurrency=1)
    await connected(worker)
    for n in (1, 2, 3):
        await worker.handle_message(assign(n))
    await asyncio.sleep(0)
    worker.detach()
    await connected(worker, outstanding=[aid(1), aid(3)])
    assert worker.active == {aid(1): "running", aid(3): "queued"}
    gate.release.set()
    assert await worker.wait_idle(5)
    assert sorted(worker.outbox) == [aid(1), aid(3)]
    await worker.aclose()


async def test_progress_heartbeats_while_running() -> None:
    gate = Gate()
    worker = inline(gate, heartbeat_override=100)  # a beat every 50 ms
    transport = await connected(worker)
    await worker.handle_message(assign(1))

    async def beats(n: int) -> None:
        while len(transport.texts("progress")) < n:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(beats(3), 10)  # however slowly the machine runs
    assert {b["assignment"] for b in transport.texts("progress")} == {aid(1)}
    gate.release.set()
    assert await worker.wait_idle(5)
    count = len(transport.texts("progress"))
    await worker._beat()
    assert len(transport.texts("progress")) == count  # idle: a beat sends nothing
    await worker.aclose()


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (KernelTimeout("kernel exceeded its 60 s time limit"), "timeout"),
        (KernelFailed("kernel trapped: unreachable"), "kernel_failed"),
        (KernelHashMismatch("sha256 mismatch"), "hash_mismatch"),
        (KernelRejected("imports env.f"), "kernel_rejected"),
        (ZeroDivisionError("division by zero"), "internal"),
    ],
)
async def test_task_failures_are_reported_with_their_code(exc: Exception, code: str) -> None:
    def executor(a: Assignment) -> bytes:
        raise exc

    worker = inline(executor)
    transport = await connected(worker)
    await worker.handle_message(assign(1))
    assert await worker.wait_idle(5)
    [error] = transport.texts("error")
    assert error == {
        "v": 1,
        "type": "error",
        "assignment": aid(1),
        "code": code,
        "message": str(exc),
    }
    assert worker.stats.errors == 1
    assert len(worker.outbox) == 0
    await worker.aclose()


async def test_output_over_the_result_limit_is_an_error_not_a_frame() -> None:
    worker = inline(lambda a: b"x" * 100)
    transport = await connected(worker, limits={"max_result_bytes": 64})
    await worker.handle_message(assign(1))
    assert await worker.wait_idle(5)
    assert transport.results() == []
    assert transport.texts("error")[0]["code"] == "kernel_failed"
    await worker.aclose()


async def test_credit_counters_and_bad_messages() -> None:
    events: list[str] = []
    worker = inline(echo_executor, on_event=lambda name, info: events.append(name))
    await connected(worker)
    await worker.handle_message(msg("credit", validated=3, work_units=3_000_000))
    await worker.handle_message(msg("credit", validated=1, work_units=str(2**60)))
    assert worker.stats.validated == 4
    assert worker.stats.work_units == 3_000_000 + 2**60
    await worker.handle_message(msg("error", code="rate_limited", message="slow down"))
    assert worker.stats.server_errors == 1
    await worker.handle_message('{"v": 2, "type": "ack"}')
    await worker.handle_message(msg("credit", validated="x", work_units=1))
    await worker.handle_message(b"\x00\x00")
    await worker.handle_message(msg("assign", assignment=aid(9), kernel={}, input={}, lease_ms=1))
    assert events.count("bad_message") == 4
    assert worker.stats.validated == 4
    assert worker.active == {}
    await worker.aclose()


async def test_thread_executor_and_stop_refuses_new_work() -> None:
    worker = EdgeWorker(SERVER, TOKEN, 2, executor=echo_executor)
    transport = await connected(worker)
    for n in range(4):
        await worker.handle_message(assign(n, lo=n, hi=n + 1))
    assert await worker.wait_idle(5)
    assert sorted(h["assignment"] for h, _ in transport.results()) == [aid(n) for n in range(4)]
    worker.stop()
    await worker.handle_message(assign(9))
    assert worker.active == {}
    await worker.aclose()


# -- real kernels through the worker -------------------------------------------------------


async def test_real_kernel_from_the_disk_cache(manifest, tmp_path: Path) -> None:
    entry = manifest["prime_count"]
    (tmp_path / f"{entry['sha256']}.wasm").write_bytes(wasm(manifest, "prime_count"))
    worker = EdgeWorker(SERVER, TOKEN, 2, kernel_cache_dir=tmp_path)
    transport = await connected(worker)
    await worker.handle_message(assign(1, sha256=entry["sha256"], lo=0, hi=100))
    await worker.handle_message(assign(2, sha256=entry["sha256"], lo=10**12, hi=10**12 + 1000))
    assert await worker.wait_idle(30)
    outputs = {h["assignment"]: out for h, out in transport.results()}
    assert struct.unpack("<Q", outputs[aid(1)]) == (25,)
    assert struct.unpack("<Q", outputs[aid(2)]) == (37,)
    assert worker.kernels.fetches == 0
    await worker.aclose()


async def test_served_module_with_the_wrong_digest_is_a_hash_mismatch(manifest, tmp_path) -> None:
    entry = manifest["prime_count"]
    worker = EdgeWorker(SERVER, TOKEN, 1, kernel_cache_dir=tmp_path)
    served = wasm(manifest, "montecarlo_pi")
    requested: list[str] = []

    def fake_fetch(url: str) -> bytes:
        requested.append(url)
        return served

    worker.kernels._fetch = fake_fetch  # the server hands out the wrong module
    transport = await connected(worker)
    await worker.handle_message(assign(1, sha256=entry["sha256"]))
    assert await worker.wait_idle(10)
    assert requested == [f"{SERVER}/kernels/{entry['sha256']}.wasm"]
    [error] = transport.texts("error")
    assert error["code"] == "hash_mismatch"
    assert list(tmp_path.iterdir()) == []  # nothing unverified is cached
    await worker.aclose()


async def test_fetched_kernel_is_cached_on_disk_and_in_memory(manifest, tmp_path) -> None:
    entry = manifest["montecarlo_pi"]
    store = KernelStore(SERVER, TOKEN, tmp_path)
    store._fetch = lambda url: wasm(manifest, "montecarlo_pi")
    ref = proto.KernelRef(
        "montecarlo_pi", "1.0.0", entry["sha256"], f"/kernels/{entry['sha256']}.wasm"
    )
    first, second = await asyncio.gather(store.get(ref), store.get(ref))
    assert first == second == wasm(manifest, "montecarlo_pi")
    assert (tmp_path / f"{entry['sha256']}.wasm").read_bytes() == first
    (tmp_path / f"{entry['sha256']}.wasm").write_bytes(b"corrupt")
    fresh = KernelStore(SERVER, TOKEN, tmp_path)
    fresh._fetch = lambda url: wasm(manifest, "montecarlo_pi")
    assert await fresh.get(ref) == first  # a corrupt cache entry is fetched again
    assert (tmp_path / f"{entry['sha256']}.wasm").read_bytes() == first


def test_kernel_stores_share_one_opener_built_on_first_use() -> None:
    # given many stores, as a load generator with thousands of workers in one process has
    stores = [KernelStore(SERVER, f"{TOKEN}{i}") for i in range(3)]
    # then they fetch through one opener (building one loads the CA certificates)
    assert stores[0]._opener is stores[1]._opener is stores[2]._opener


def test_kernel_requests_carry_the_token_only_to_the_server(monkeypatch) -> None:
    store = KernelStore(SERVER, TOKEN)
    seen: list[Any] = []

    class Response:
        def __enter__(self) -> Response:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def read(self, n: int) -> bytes:
            return b"\0asm"

    def fake_open(request: Any, timeout: float) -> Response:
        seen.append(request)
        return Response()

    monkeypatch.setattr(store._opener, "open", fake_open)
    ref = proto.KernelRef("k", "1", "0" * 64, "/kernels/x.wasm")
    assert store._fetch(store.url_for(ref)) == b"\0asm"
    assert seen[0].full_url == f"{SERVER}/kernels/x.wasm"
    assert seen[0].get_header("Authorization") == f"Worker {TOKEN}"
    elsewhere = proto.KernelRef("k", "1", "0" * 64, "https://cdn.example.org/x.wasm")
    store._fetch(store.url_for(elsewhere))
    assert seen[1].get_header("Authorization") is None
    with pytest.raises(KernelFetchError):
        store.url_for(proto.KernelRef("k", "1", "0" * 64, "file:///etc/hostname"))


# -- reconnect loop ------------------------------------------------------------------------


async def test_run_reconnects_with_backoff_and_stops_on_unauthorized() -> None:
    delays: list[float] = []

    def on_event(name: str, info: dict[str, Any]) -> None:
        if name == "reconnecting":
            delays.append(info["delay"])

    backoff = Backoff(0.001, 0.004, rng=lambda: 1.0)
    worker = inline(echo_executor, backoff=backoff, on_event=on_event)
    codes = iter([None, 1006, 4008, 1011, 4001, 1000])

    async def session(wake: asyncio.Event) -> tuple[int | None, str]:
        return next(codes), "bad token"

    worker._session = session
    with pytest.raises(WorkerRejected) as exc:
        await asyncio.wait_for(worker.run(), 5)
    assert exc.value.code == 4001
    assert "token" in str(exc.value)
    assert delays == [0.001, 0.002, 0.004, 0.004]
    assert next(codes) == 1000  # no further attempt after 4001


async def test_run_stops_on_protocol_version_and_on_stop() -> None:
    worker = inline(echo_executor, backoff=Backoff(0.001, 0.001))

    async def version_mismatch(wake: asyncio.Event) -> tuple[int | None, str]:
        return 4002, ""

    worker._session = version_mismatch
    with pytest.raises(WorkerRejected) as exc:
        await asyncio.wait_for(worker.run(), 5)
    assert exc.value.code == 4002

    other = inline(echo_executor, backoff=Backoff(0.001, 0.001))
    calls = 0

    async def flaky(wake: asyncio.Event) -> tuple[int | None, str]:
        nonlocal calls
        calls += 1
        if calls == 3:
            other.stop()
        return 1006, ""

    other._session = flaky
    await asyncio.wait_for(other.run(), 5)
    assert calls == 3
