"""Idle sockets and hello bursts through a real Daphne, with every statement and transaction it
runs counted (``bench/sqlcount``): one re-check per process, not a timer per socket; a burst of
hellos welcomed in a few transactions; nothing lost."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import psycopg
import pytest
from websockets.asyncio.client import connect as connect_async
from websockets.sync.client import ClientConnection, connect

from bench.dispatch_probes import sql_env, sql_totals
from ccgsc_worker import abi
from jobs import dispatch, services
from jobs.models import Job, JobStatus, Task, Worker
from tenants.roles import Role
from tests import servers
from tests.invariants import invariants
from tests.jobs.helpers import _runner, fc_job
from tests.protocol.wire import hello, result_frame

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _daphne(sql_dir: Path, **env: str) -> servers.DaphneServer:
    """A Daphne counting its SQL into ``sql_dir``; Celery messages go to a queue of their own
    (no worker here: a finished job's reduction just waits)."""
    return servers.DaphneServer(
        **sql_env(sql_dir), CCGSC_CELERY_QUEUE=f"unconsumed-{uuid.uuid4().hex[:8]}", **env
    )


def _settled(sql_dir: Path, key: str = "transactions") -> int:
    """The Daphne's running total of ``key`` once it stopped moving (its file is rewritten
    twice a second)."""
    last, deadline = None, time.monotonic() + 30
    while time.monotonic() < deadline:
        totals = sql_totals(sql_dir)
        now = sum(t[key] for t in totals.values()) if totals else None
        if now is not None and now == last:
            return now
        last = now
        time.sleep(1.2)
    raise AssertionError(f"the SQL counter did not settle: {last}")


def _sample(sql_dir: Path) -> dict:
    """The Daphne's latest counter file (its totals and when they were written)."""
    (totals,) = sql_totals(sql_dir).values()
    return totals


def _reply(socket: ClientConnection, timeout: float = 10) -> dict:
    return json.loads(socket.recv(timeout=timeout))


def _welcomed_worker(stack: ExitStack, daphne: servers.DaphneServer) -> ClientConnection:
    _, token = dispatch.contributor_create_anonymous()
    socket = stack.enter_context(
        connect(daphne.ws_url + "/ws/edge/", open_timeout=10, close_timeout=5)
    )
    socket.send(hello(token, "edge", slots=1))
    assert _reply(socket)["type"] == "welcome"
    return socket


def _output(assign: dict) -> bytes:
    given = assign["input"]
    return _runner(assign["kernel"]["sha256"]).run(
        abi.encode_input(int(given["lo"]), int(given["hi"]), int(given["seed"]), given["params"])
    )


def test_one_recheck_per_process_finds_work_a_lost_wake_did_not_announce(
    tmp_path, tenant, owner, kernels
):
    sql_dir = tmp_path / "sql"
    with ExitStack() as stack:
        daphne = stack.enter_context(
            servers.running(_daphne(sql_dir, CCGSC_DISPATCH_IDLE_RECHECK_S="1"))
        )
        # given thirty welcomed workers with nothing to do
        sockets = [_welcomed_worker(stack, daphne) for _ in range(30)]
        time.sleep(1)
        start = _sample(sql_dir)
        # when they idle for six seconds (re-checks every 0.5-1.5 s)
        time.sleep(6)
        end = _sample(sql_dir)
        window_s = end["t"] - start["t"]
        idle_statements = end["statements"] - start["statements"]
        # then the process re-checked them together: two statements a re-check, at most one
        # re-check each half second, plus at most one batched flush per socket for whatever else
        # lands in the window on a loaded machine (a late welcome's claim, a heartbeat); a timer
        # per socket would run two per socket per period, 2 · 30 · 6 / 1.5 = 240 here
        assert window_s > 4
        bound = 2 * (window_s / 0.5 + 1) + len(sockets)
        assert 2 <= idle_statements <= bound, (idle_statements, window_s)
        assert bound < 2 * len(sockets) * window_s / 1.5
        # when a job's tasks become dispatchable without any wake (as if it were lost)
        job = fc_job(tenant, owner, kernels["prime_count"], tasks=2, seed=3, start=False)
        Job.objects.unscoped().filter(pk=job.pk).update(status=JobStatus.RUNNING)
        Task.objects.unscoped().filter(job=job).update(dispatchable=True)
        # then within a few re-checks the idle sockets are handed all four replicas
        assigns: list[tuple[ClientConnection, dict]] = []
        deadline = time.monotonic() + 15
        while len(assigns) < 4 and time.monotonic() < deadline:
            for socket in sockets:
                try:
                    message = _reply(socket, timeout=0.02)
                except TimeoutError:
                    continue
                if message["type"] == "assign":
                    assigns.append((socket, message))
        assert len(assigns) == 4, daphne.log_tail()
        # and their results validate both tasks, losing nothing
        for socket, assign in assigns:
            output = _output(assign)
            header = {
                "v": 1,
                "type": "result",
                "assignment": assign["assignment"],
                "sha256": hashlib.sha256(output).hexdigest(),
            }
            socket.send(result_frame(header, output))
            while (reply := _reply(socket))["type"] != "ack":
                pass
            assert reply["status"] == "accepted"
    with psycopg.connect(servers.test_database_url(), autocommit=True) as conn:
        report = invariants(conn, str(job.pk), 2)
    assert report["ok"], report
    assert report["validated_tasks"] == 2
    assert "Traceback" not in daphne.log_tail(10_000), daphne.log_tail(80)


BURST = 200


def test_a_burst_of_hellos_is_welcomed_in_a_few_transactions(tmp_path):
    sql_dir = tmp_path / "sql"
    tokens = [dispatch.contributor_create_anonymous()[1] for _ in range(BURST)]

    async def burst(daphne: servers.DaphneServer) -> tuple[int, int, int]:
        async with AsyncExitStack() as stack:
            sockets = await asyncio.gather(
                *(
                    stack.enter_async_context(
                        connect_async(daphne.ws_url + "/ws/edge/", open_timeout=30, close_timeout=5)
                    )
                    for _ in range(BURST)
                )
            )
            before = await asyncio.to_thread(_settled, sql_dir)
            # when every socket says hello at once
            await asyncio.gather(
                *(s.send(hello(t, "edge", slots=1)) for s, t in zip(sockets, tokens, strict=True))
            )
            replies = await asyncio.gather(*(s.recv() for s in sockets))
            assert {json.loads(r)["type"] for r in replies} == {"welcome"}
            hellos = await asyncio.to_thread(_settled, sql_dir) - before
            online = await asyncio.to_thread(Worker.objects.filter(is_online=True).count)
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(Worker.objects.filter(is_online=True).exists):
            assert time.monotonic() < deadline, "workers still online after their sockets closed"
            await asyncio.sleep(0.2)
        closes = await asyncio.to_thread(_settled, sql_dir) - before - hellos
        return hellos, online, closes

    with servers.running(_daphne(sql_dir, CCGSC_DISPATCH_IDLE_RECHECK_S="3600")) as daphne:
        hellos, online, closes = asyncio.run(burst(daphne))
    # then all were welcomed and registered, and the hellos (and the claims that follow them)
    # shared a few transactions: one by one they cost at least three each (token, worker,
    # claim); the disconnects too
    assert online == BURST
    assert hellos <= BURST // 4, hellos
    assert closes <= BURST // 4, closes
    assert "Traceback" not in daphne.log_tail(10_000), daphne.log_tail(80)


STARTED = 120


def test_a_job_start_reaches_every_idle_socket_in_a_few_flushes(tmp_path, tenant, owner, kernels):
    sql_dir = tmp_path / "sql"
    tokens = [dispatch.contributor_create_anonymous()[1] for _ in range(STARTED)]
    job = fc_job(
        tenant, owner, kernels["prime_count"], tasks=2000, chunk_size=100, seed=3, start=False
    )

    async def start(daphne: servers.DaphneServer) -> tuple[list[dict], int]:
        async with AsyncExitStack() as stack:
            sockets = await asyncio.gather(
                *(
                    stack.enter_async_context(
                        connect_async(daphne.ws_url + "/ws/edge/", open_timeout=30, close_timeout=5)
                    )
                    for _ in range(STARTED)
                )
            )
            await asyncio.gather(
                *(s.send(hello(t, "edge", slots=1)) for s, t in zip(sockets, tokens, strict=True))
            )
            replies = await asyncio.gather(*(s.recv() for s in sockets))
            assert {json.loads(r)["type"] for r in replies} == {"welcome"}
            before = await asyncio.to_thread(_settled, sql_dir)
            # when the job starts (its wake goes through the channel layer to the process)
            await asyncio.to_thread(services.job_start, job=job, actor_role=Role.OWNER)

            async def first_assign(socket) -> dict:  # noqa: ANN001
                while (message := json.loads(await asyncio.wait_for(socket.recv(), 30)))[
                    "type"
                ] != "assign":
                    pass
                return message

            assigns = await asyncio.gather(*(first_assign(s) for s in sockets))
            claims = await asyncio.to_thread(_settled, sql_dir) - before
        return assigns, claims

    with servers.running(_daphne(sql_dir, CCGSC_DISPATCH_IDLE_RECHECK_S="3600")) as daphne:
        assigns, claims = asyncio.run(start(daphne))
    # then every idle socket got its first assign, all distinct, without a re-check (an hour
    # away), and their claims shared a few transactions (one by one: one each)
    assert len({a["assignment"] for a in assigns}) == STARTED
    assert claims <= STARTED // 4, claims
    assert "Traceback" not in daphne.log_tail(10_000), daphne.log_tail(80)
