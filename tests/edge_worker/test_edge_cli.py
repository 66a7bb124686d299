"""The ``ccgsc-worker`` command: its log lines from real worker events, and its exit statuses."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import uuid
from collections.abc import Iterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

from ccgsc_worker import cli
from ccgsc_worker.client import EdgeWorker
from ccgsc_worker.protocol import Assignment

TOKEN = "w" * 40
A1 = str(uuid.UUID(int=1001))
SHA = "ab" * 32


class Recorder:
    """A transport that keeps nothing."""

    async def send(self, message: str | bytes, /) -> None:
        return None


def message(kind: str, **fields: object) -> str:
    """A server message."""
    return json.dumps({"v": 1, "type": kind, **fields})


async def test_events_become_concise_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    printer = cli.ProgressPrinter()

    def failing(a: Assignment) -> bytes:
        if a.lo == 7:
            raise RuntimeError("boom")
        return struct.pack("<Q", a.hi)

    worker = EdgeWorker(
        "http://127.0.0.1:1", TOKEN, 1, executor=failing, inline_executor=True, on_event=printer
    )
    printer.worker = worker
    caplog.set_level(logging.DEBUG, logger="ccgsc_worker")
    await worker.attach(Recorder())
    welcome = {"worker": str(uuid.UUID(int=1)), "heartbeat_ms": 10_000, "outstanding": []}
    await worker.handle_message(message("welcome", **welcome))
    kernel = {"name": "prime_count", "version": "1", "sha256": SHA, "url": "/k.wasm"}
    for aid, lo in ((A1, 0), (str(uuid.UUID(int=1002)), 7)):
        data = {"lo": str(lo), "hi": "100", "seed": "0", "params": []}
        await worker.handle_message(
            message("assign", assignment=aid, kernel=kernel, input=data, lease_ms=1000)
        )
        assert await worker.wait_idle(5)
    await worker.handle_message(message("ack", assignment=A1, status="late"))
    await worker.handle_message(message("credit", validated=2, work_units=200))
    await worker.handle_message(message("error", code="rate_limited", message="slow down"))
    await worker.handle_message("nonsense")
    worker.detach()
    await worker.aclose()
    text = caplog.text
    assert "connected as worker 00000000-0000-0000-0000-000000000001 (heartbeat 10 s)" in text
    assert "done prime_count [0, 100) in " in text
    assert "task 00000000 failed (internal): boom" in text
    assert "result 00000000 late" in text
    assert "credit: +2 validated, +200 work units (session: 2 validated)" in text
    assert "server error rate_limited: slow down" in text
    assert "ignored a malformed server message" in text
    assert "reconnecting in " in text


@pytest.fixture
def refusing_server() -> Iterator[str]:
    """A server that answers every hello by closing with 4001, on its own thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    port: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(4001, "revoked")

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:
            port.append(server.sockets[0].getsockname()[1])
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(10)
    yield f"http://127.0.0.1:{port[0]}"
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def test_a_rejected_token_exits_with_status_2(refusing_server: str) -> None:
    status = cli.main(["--server", refusing_server, "--token", TOKEN, "--log-level", "error"])
    assert status == cli.EXIT_UNAUTHORIZED


def test_a_token_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--server", "http://127.0.0.1:1"])
    assert exited.value.code == 2
