"""EdgeWorker.run() over a real WebSocket on loopback, against a small scripted server.

The session's rules are covered by the scenario table; these tests check that the client's own
loop carries them out over a socket: graceful stop, resume after a drop, fatal close codes.
"""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from ccgsc_worker import protocol as proto
from ccgsc_worker.backoff import Backoff
from ccgsc_worker.client import EdgeWorker, WorkerRejected
from ccgsc_worker.protocol import Assignment

TOKEN = "w" * 40
WORKER_ID = str(uuid.UUID(int=1))
A1 = str(uuid.UUID(int=1001))
SHA = "ab" * 32

Script = Callable[[ServerConnection, "Server"], Awaitable[None]]


def welcome() -> str:
    """A welcome for WORKER_ID."""
    return json.dumps(
        {"v": 1, "type": "welcome", "worker": WORKER_ID, "heartbeat_ms": 10_000, "outstanding": []}
    )


def assign(aid: str) -> str:
    """An assign for ``aid``."""
    return json.dumps(
        {
            "v": 1,
            "type": "assign",
            "assignment": aid,
            "kernel": {"name": "k", "version": "1", "sha256": SHA, "url": f"/k/{SHA}.wasm"},
            "input": {"lo": "1", "hi": "5", "seed": "0", "params": []},
            "lease_ms": 60_000,
        }
    )


def ack(aid: str, status: str) -> str:
    """An ack."""
    return json.dumps({"v": 1, "type": "ack", "assignment": aid, "status": status})


class Server:
    """Runs one script per connection and records what each connection received."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.connections: list[list[Any]] = []
        self.close_codes: list[int | None] = []

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.append([])
        script = self.scripts.pop(0) if self.scripts else None
        try:
            if script is not None:
                await script(ws, self)
        finally:
            await ws.wait_closed()
            self.close_codes.append(ws.close_code)

    async def receive(self, ws: ServerConnection) -> Any:
        """The next message, decoded (a result frame becomes its header)."""
        data = await ws.recv()
        decoded = (
            proto.decode_result_frame(data)[0] if isinstance(data, bytes) else json.loads(data)
        )
        self.connections[-1].append(decoded)
        return decoded

    async def receive_until(self, ws: ServerConnection, kind: str) -> dict[str, Any]:
        """Skip heartbeats and the like until a message of ``kind`` arrives."""
        while (message := await self.receive(ws))["type"] != kind:
            pass
        return message


class Gate:
    """An inline executor that holds each task until released."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, a: Assignment) -> bytes:
        self.started.set()
        await self.release.wait()
        return struct.pack("<QQ", a.lo, a.hi)


async def start(server: Server, executor: Any) -> tuple[EdgeWorker, asyncio.Task[None], Any]:
    """Serve on a loopback port and run a worker against it."""
    listener = await serve(server.handler, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    worker = EdgeWorker(
        f"http://127.0.0.1:{port}",
        TOKEN,
        1,
        executor=executor,
        inline_executor=True,
        backoff=Backoff(0.01, 0.02),
        capabilities={"cores": 1},
    )
    return worker, asyncio.create_task(worker.run()), listener


async def test_graceful_stop_finishes_the_task_delivers_it_and_closes() -> None:
    gate = Gate()

    async def script(ws: ServerConnection, server: Server) -> None:
        await server.receive_until(ws, "hello")
        await ws.send(welcome())
        await ws.send(assign(A1))
        await server.receive_until(ws, "capacity")
        result = await server.receive_until(ws, "result")
        await ws.send(ack(result["assignment"], "accepted"))

    server = Server(script)
    worker, run, listener = await start(server, gate)
    async with listener:
        await asyncio.wait_for(gate.started.wait(), 5)
        worker.stop()
        gate.release.set()
        await asyncio.wait_for(run, 10)
    kinds = [m["type"] for m in server.connections[0] if m["type"] != "progress"]
    assert kinds == ["hello", "capacity", "result"]
    assert server.connections[0][1]["slots"] == 0
    assert worker.stats.results_acked == 1
    assert len(worker.outbox) == 0
    assert server.close_codes == [1000]


async def test_a_dropped_connection_resumes_and_resends_the_result() -> None:
    gate = Gate()
    gate.release.set()

    async def first(ws: ServerConnection, server: Server) -> None:
        await server.receive_until(ws, "hello")
        await ws.send(welcome())
        await ws.send(assign(A1))
        await server.receive_until(ws, "result")
        await ws.close(1011, "restarting")  # before the ack

    async def second(ws: ServerConnection, server: Server) -> None:
        hello = await server.receive_until(ws, "hello")
        assert hello["resume"] == WORKER_ID
        await ws.send(welcome())
        result = await server.receive_until(ws, "result")
        await ws.send(ack(result["assignment"], "duplicate"))
        await ws.close(4001, "revoked")

    server = Server(first, second)
    worker, run, listener = await start(server, gate)
    async with listener:
        with pytest.raises(WorkerRejected) as rejected:
            await asyncio.wait_for(run, 10)
    assert rejected.value.code == 4001
    assert "revoked" in str(rejected.value)
    assert [m["type"] for m in server.connections[1]] == ["hello", "result"]  # right away
    assert worker.stats.acks == {"duplicate": 1}
    assert worker.stats.results_resent == 1
    assert worker.stats.sessions == 2
    assert len(worker.outbox) == 0


async def test_graceful_stop_gives_up_waiting_for_acks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ccgsc_worker.client.STOP_ACK_TIMEOUT_S", 0.05)
    gate = Gate()
    gate.release.set()

    async def script(ws: ServerConnection, server: Server) -> None:
        await server.receive_until(ws, "hello")
        await ws.send(welcome())
        await ws.send(assign(A1))
        await server.receive_until(ws, "result")  # and never acknowledges it

    server = Server(script)
    worker, run, listener = await start(server, gate)
    async with listener:
        await asyncio.wait_for(gate.started.wait(), 5)
        while not len(worker.outbox):
            await asyncio.sleep(0.01)
        worker.stop()
        await asyncio.wait_for(run, 10)
    assert list(worker.outbox) == [A1]  # kept: the server reissues it if it never arrived
    assert server.close_codes == [1000]
