"""Killing one Daphne of several mid-job: its workers reconnect to another and nothing is lost.

Real processes: the Daphne launcher with three Daphnes sharing one port, a Celery worker with
beat (the lease sweeper), PostgreSQL and Redis; fifty real ``ccgsc_worker`` clients in one event
loop (the real kernel's output, each task taking 0.2 s). One Daphne gets SIGKILL while replicas
are in flight; the launcher replaces it. The dispatch invariants are then checked with the
servers stopped (``tests/invariants.py``, the benchmark's own check)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobs import dispatch
from jobs.models import Job, Kernel
from tests import servers
from tests.e2e.conftest import wait_for_job
from tests.invariants import invariants
from tests.jobs.helpers import fc_job
from tests.servers import CeleryWorker, DaphneLauncher

pytestmark = [pytest.mark.services, pytest.mark.slow]

WORKERS = 50
TASK_SECONDS = 0.2


class KernelOutputs:
    """The real montecarlo_pi output of each task (computed once per input), after a short sleep
    so replicas are in flight when the Daphne dies."""

    def __init__(self, wasm: bytes) -> None:
        from ccgsc_worker.kernel import KernelRunner

        self.sha256 = hashlib.sha256(wasm).hexdigest()
        self.runner = KernelRunner(wasm, self.sha256)
        self.cache: dict[bytes, bytes] = {}

    async def __call__(self, assignment: Any) -> bytes:
        assert assignment.kernel.sha256 == self.sha256
        data = assignment.input_bytes()
        if data not in self.cache:
            self.cache[data] = self.runner.run(data)
        await asyncio.sleep(TASK_SECONDS)
        return self.cache[data]


class Swarm(threading.Thread):
    """Edge workers in an event loop of their own; counts each worker's welcomes."""

    def __init__(self, url: str, tokens: list[str], outputs: KernelOutputs) -> None:
        super().__init__(name="swarm", daemon=True)
        self.url, self.tokens, self.outputs = url, tokens, outputs
        self.welcomes: Counter[int] = Counter()
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.workers: list = []

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from ccgsc_worker.client import Backoff, EdgeWorker

        self.loop = asyncio.get_running_loop()

        def hook(i: int):  # noqa: ANN202
            def on_event(name: str, info: dict[str, Any]) -> None:
                if name == "welcome":
                    self.welcomes[i] += 1

            return on_event

        self.workers = [
            EdgeWorker(
                self.url,
                token,
                1,
                executor=self.outputs,
                inline_executor=True,
                on_event=hook(i),
                capabilities={"cores": 1, "simd": True},
                backoff=Backoff(initial=0.2, maximum=2.0),
            )
            for i, token in enumerate(self.tokens)
        ]
        runs = [asyncio.create_task(w.run()) for w in self.workers]
        self.ready.set()
        await asyncio.gather(*runs, return_exceptions=True)

    def stop(self) -> None:
        if self.loop is not None:
            for worker in self.workers:
                self.loop.call_soon_threadsafe(lambda w=worker: w.stop(abandon=True))
        self.join(timeout=30)


def _sockets(pid: int) -> int:
    """Open sockets of a process (its WebSockets, plus a few database and Redis ones)."""
    try:
        return sum(
            os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return 0


@pytest.fixture
def launcher(transactional_db, celery_queue, wasm_built):
    from ccgsc_site.celery import app

    previous = app.conf.task_default_queue
    app.conf.task_default_queue = celery_queue
    celery = CeleryWorker(celery_queue, beat=True)
    celery.start()
    daphnes = DaphneLauncher(processes=3, CCGSC_CELERY_QUEUE=celery_queue)
    daphnes.start()
    yield daphnes, celery
    daphnes.stop()
    celery.stop()
    app.conf.task_default_queue = previous


def test_killing_one_daphne_of_three_moves_its_workers_and_loses_nothing(launcher, tenant, owner):
    from jobs.kernels import kernel_module_bytes, kernel_sync_builtins

    daphnes, celery = launcher
    kernel_sync_builtins()
    kernel = Kernel.objects.get(name="montecarlo_pi", tenant=None)
    tokens = [dispatch.contributor_create_anonymous()[1] for _ in range(WORKERS)]
    swarm = Swarm(daphnes.url, tokens, KernelOutputs(kernel_module_bytes(kernel)))
    swarm.start()
    assert swarm.ready.wait(30)
    deadline = time.monotonic() + 60
    while len(swarm.welcomes) < WORKERS:
        assert time.monotonic() < deadline, daphnes.log_tail()
        time.sleep(0.1)
    # given a job of 400 tasks (quorum 2, 0.2 s each) running on fifty workers
    job = fc_job(
        tenant, owner, kernel, tasks=400, range_start=0, chunk_size=10, seed=42, lease_seconds=5
    )
    while Job.objects.unscoped().get(pk=job.pk).tasks_validated < 60:
        assert time.monotonic() < deadline + 60, daphnes.log_tail()
        time.sleep(0.05)
    # when the Daphne holding the most sockets is killed without warning
    victim = max(daphnes.daphne_pids(), key=_sockets)
    held = _sockets(victim)
    os.kill(victim, signal.SIGKILL)
    # then its workers reconnect to the others, and the job completes
    job = wait_for_job(job.pk, timeout_s=180)
    swarm.stop()
    moved = sum(1 for n in swarm.welcomes.values() if n >= 2)
    assert moved >= 1, f"no worker reconnected (the victim held {held} sockets)"
    assert victim not in daphnes.daphne_pids()
    daphnes.stop()
    celery.stop()
    # and, checked with every server stopped, no task was lost, each validated task credited
    # exactly quorum replicas, the books balance and the director's counters match a recount
    with psycopg.connect(servers.test_database_url(), autocommit=True) as conn:
        report = invariants(conn, str(job.pk), 2)
    assert report["ok"], report
    assert report["validated_tasks"] == 400
    assert Path(daphnes.log_path).read_text().count("started daphne pid=") == 4
