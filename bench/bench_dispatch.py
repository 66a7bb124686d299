#!/usr/bin/env python3
"""Dispatch throughput and latency: a swarm of simulated edge workers against the real servers.

For each connection count N the benchmark creates a throwaway PostgreSQL database (from a
migrated template), flushes a Redis database index, starts Daphne and a Celery worker as
subprocesses on loopback, creates an enterprise tenant with an API key and N anonymous
contributors, and connects N ``EdgeWorker`` clients (concurrency 1) to ``/ws/edge/`` from
``--swarm-procs`` load-generator processes (``bench/swarm.py``; default 1 below 500 connections,
else 4: one asyncio loop with ~1,000 workers lags a quarter of a second and reads assigns late).
Their inline executor returns the real ``montecarlo_pi`` output of each tiny task (computed once
per task with the real kernel, then cached), so quorum 2 validates.

A job with quorum 2 is created through the REST API and started; then, after a warm-up, a
steady window is measured:
- validated replicas per second (assignments with status ``valid`` counted in the database at
  both ends of the window, cross-checked with the ``credit`` messages the workers received);
- push latency: job start request sent -> each worker's first ``assign``;
- turnaround: result sent -> the same worker's next ``assign``;
- database work per validated replica: transactions, sessions and rows from
  ``pg_stat_database``;
- where the push went (``push_trace``): the start request, its queue chunk, the wake, each
  Daphne's woken sockets and flushes until its last first ``assign``, Celery's chunks
  (``bench/sqlcount/push_trace.py`` in every server process), and the swarm processes'
  event-loop lag meanwhile (p99 of the worst process).
With ``--profile`` one more run uses bench/daphne_profiled.py (stack sampler + SQL counter) over
the steady window.

Usage: python bench/bench_dispatch.py [--quick] [--connections 100 1000] [--duration 30]
           [--swarm-procs K]
Writes bench/results/dispatch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "edge_worker"))

import psycopg  # noqa: E402
from dispatch_probes import (  # noqa: E402 - after the path setup
    backends_cpu,
    cpu_per_replica,
    cpu_seconds,
    cpu_snapshot,
    pct,
    pg_reads,
    pg_stats,
    push_trace,
    reads_per_replica,
    sql_env,
    sql_per_replica,
    sql_totals,
)
from swarm import (  # noqa: E402
    FIRST_FRAMES,
    Recorder,
    SwarmProcesses,
    default_swarm_procs,
    merge_reports,
    shares,
)

from tests.invariants import invariants  # noqa: E402
from tests.servers import CeleryWorker, DaphneLauncher, DaphneServer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dispatch.json"
LOG_DIR = ROOT / "bench" / "results" / "logs"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Overridable so that two checkouts on one machine do not benchmark in each other's database.
DB_NAME = os.environ.get("CCGSC_BENCH_DATABASE", "ccgsc_bench")
TEMPLATE = f"{DB_NAME}_template"
REDIS_DB = int(os.environ.get("CCGSC_BENCH_REDIS_DB", "9"))
BOINC_JOBS_PER_S = 8.8e6 / 86400  # one BOINC server, 2005: 8.8 M jobs/day
TARGET_REPLICAS_PER_S = 1000.0
TARGET_P99_MS = 100.0
TARGET_CONNECTIONS = 1000
CHUNK = 10  # montecarlo samples per task: dispatch cost dominates, not compute
SEED = 42
HTTP_WARMUP_REQUESTS = 8  # each lands on a Daphne at random: 2 Daphnes all warm with p > 0.99


# ---------------------------------------------------------------- environment and servers


def bench_env(queue: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment shared by the servers, the management commands and this process."""
    env = os.environ.copy()
    env.update(
        {
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
            "REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "CCGSC_ENV": "test",
            "CCGSC_CELERY_QUEUE": queue,
            "DJANGO_SETTINGS_MODULE": "ccgsc_site.settings",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def pg_admin(*statements: str) -> None:
    """Run statements on the maintenance database (autocommit)."""
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def disconnect(name: str) -> None:
    """Terminate every session on database ``name``."""
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


def drop_database(name: str) -> None:
    """Drop a database, disconnecting its sessions first."""
    disconnect(name)
    pg_admin(f'DROP DATABASE IF EXISTS "{name}"')


def build_template(env: dict[str, str]) -> None:
    """A migrated database with the built-in kernels, cloned for every scenario."""
    drop_database(TEMPLATE)
    drop_database(DB_NAME)
    pg_admin(f'CREATE DATABASE "{DB_NAME}"')
    manage(env, "migrate", "--noinput")
    manage(env, "kernels_sync")
    _close_django()
    drop_database(TEMPLATE)
    disconnect(DB_NAME)
    pg_admin(f'ALTER DATABASE "{DB_NAME}" RENAME TO "{TEMPLATE}"')


def fresh_database() -> None:
    """Recreate the benchmark database from the template."""
    _close_django()
    drop_database(DB_NAME)
    pg_admin(f'CREATE DATABASE "{DB_NAME}" TEMPLATE "{TEMPLATE}"')


def _close_django() -> None:
    from django.conf import settings

    if settings.configured:
        from django.db import connections

        connections.close_all()


def manage(env: dict[str, str], *args: str) -> None:
    """Run a management command against the benchmark database."""
    subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True
    )


def flush_redis() -> None:
    """Empty the benchmark's Redis database index."""
    import redis

    redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}").flushdb()


def start_daphne(env: dict[str, str], profile_out: Path | None) -> DaphneServer:
    """Daphne from the shared server harness, optionally under the profiling wrapper."""
    program = None
    if profile_out is not None:
        env = {**env, "CCGSC_BENCH_PROFILE_OUT": str(profile_out)}
        program = [sys.executable, str(ROOT / "bench" / "daphne_profiled.py")]
    server = DaphneServer(env=env, program=program, log_dir=LOG_DIR, start_timeout_s=60)
    server.start()
    return server


def start_celery(env: dict[str, str], queue: str) -> CeleryWorker:
    server = CeleryWorker(queue, env=env, log_dir=LOG_DIR)
    server.start()
    return server


# ---------------------------------------------------------------- fixtures (in this process)


def django_setup(env: dict[str, str]) -> None:
    """Set this process up as a Django client of the benchmark database."""
    for key in ("DATABASE_URL", "REDIS_URL", "CCGSC_ENV", "CCGSC_CELERY_QUEUE"):
        os.environ[key] = env[key]
    os.environ["DJANGO_SETTINGS_MODULE"] = "ccgsc_site.settings"
    import django

    django.setup()


def make_fixtures(n_workers: int) -> tuple[str, list[str]]:
    """An enterprise tenant's API key and ``n_workers`` anonymous contributor tokens."""
    from jobs import dispatch
    from jobs.models import Contributor
    from tenants import services as tenant_services
    from tenants.models import Tenant, User
    from tenants.roles import Role
    from tenants.tiers import Tier

    user = User.objects.create_user(email=f"bench-{uuid.uuid4().hex[:8]}@example.com")
    tenant = tenant_services.tenant_create(name="Bench", owner=user, tier=Tier.ENTERPRISE)
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.ENTERPRISE)
    tenant.refresh_from_db()
    key = tenant_services.api_key_create(
        tenant=tenant, actor=user, actor_role=Role.OWNER, name="bench", role=Role.ADMIN
    ).raw_key
    # One INSERT per thousand (10,000 one-row transactions take minutes on a busy machine).
    contributors = Contributor.objects.bulk_create(
        [Contributor() for _ in range(n_workers)], batch_size=1000
    )
    tokens = [dispatch.worker_token_issue(contributor=c) for c in contributors]
    _close_django()
    return key, tokens


def api(base: str, key: str, method: str, path: str, body: dict | None = None) -> dict:
    """One REST call with the API key."""
    request = urllib.request.Request(  # noqa: S310 - loopback only
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310
        return json.loads(response.read())


# ---------------------------------------------------------------- the swarm


class Outputs:
    """Real montecarlo_pi outputs, computed once per distinct task input with the real kernel;
    with ``think_s``, each task also takes that long (an awaited sleep: a ~1 s task).

    ``prewarm(tasks)`` computes the bench job's outputs before the workers connect: computed on
    first sight, a job start's 3,000 first and prefetched tasks cost one swarm process's event
    loop ~0.2 s of kernel calls while the first ``assign``s arrive, and every socket behind them
    read its frame that much later (real workers run their kernels on their own devices).
    ``misses`` counts outputs computed after that."""

    def __init__(self, think_s: float = 0.0) -> None:
        self.think_s = think_s
        self.misses = 0
        import hashlib

        from ccgsc_worker.kernel import KernelRunner

        wasm = (ROOT / "wasm" / "build" / "montecarlo_pi.wasm").read_bytes()
        self.sha256 = hashlib.sha256(wasm).hexdigest()
        self.runner = KernelRunner(wasm, self.sha256)
        self.cache: dict[bytes, bytes] = {}

    def __call__(self, assignment: Any) -> bytes:
        if assignment.kernel.sha256 != self.sha256:
            raise RuntimeError("the server assigned a different montecarlo_pi module")
        data = assignment.input_bytes()
        out = self.cache.get(data)
        if out is None:
            self.misses += 1
            out = self.cache[data] = self.runner.run(data)
        if self.think_s:
            return self._after_think(out)
        return out

    def prewarm(self, tasks: int) -> None:
        """The outputs of the first ``tasks`` tasks of the job ``run_swarm`` creates (its range
        from 0, ``CHUNK`` and ``SEED``), keyed as ``__call__`` looks them up: about 5 s per
        swarm process for the default window's 75,000 tasks."""
        from ccgsc_worker import abi

        for i in range(tasks):
            data = abi.encode_input(i * CHUNK, (i + 1) * CHUNK, SEED)
            self.cache[data] = self.runner.run(data)

    async def _after_think(self, out: bytes) -> bytes:
        await asyncio.sleep(self.think_s)
        return out


class EdgeSwarm:
    """One swarm process's share of the workers: ``EdgeWorker``s (``payload``: url, index of the
    first worker, tokens, think_s, concurrency) whose events go to the process's recorder."""

    def __init__(self, payload: dict[str, Any], recorder: Recorder) -> None:
        from ccgsc_worker.client import Backoff, EdgeWorker

        self.recorder = recorder
        self.outputs = outputs = Outputs(payload["think_s"])
        outputs.prewarm(payload["tasks"])
        self.workers = [
            EdgeWorker(
                payload["url"],
                token,
                payload["concurrency"],
                executor=outputs,
                inline_executor=True,
                on_event=self.hook(payload["first"] + n),
                capabilities={"cores": 1, "simd": True},
                backoff=Backoff(),
            )
            for n, token in enumerate(payload["tokens"])
        ]
        self.runs: list[asyncio.Task] = []

    def hook(self, i: int) -> Any:
        recorder = self.recorder

        def on_event(name: str, info: dict[str, Any]) -> None:
            recorder.event(name)
            if name == "welcome":
                recorder.welcome(i)
            elif name == "assign":
                recorder.frame(i)
            elif name == "completed":
                recorder.result_sent(i)
            elif name == "credit":
                recorder.credit(int(info.get("validated", 1)))

        return on_event

    async def connect(self) -> None:
        """Start the workers fifty at a time, each batch once the previous one is welcomed."""
        batch = 50
        for start in range(0, len(self.workers), batch):
            self.runs += [asyncio.create_task(w.run()) for w in self.workers[start : start + batch]]
            deadline = time.monotonic() + 60
            while len(self.recorder.welcomed) < len(self.runs) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.recorder.events["outputs_computed_late"] = self.outputs.misses
        for w in self.workers:
            w.stop(abandon=True)
        if not self.runs:
            return
        _, pending = await asyncio.wait(self.runs, timeout=20)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self.runs, return_exceptions=True)


# How long the push's CPU is measured at most, when some worker never gets its first assign.
PUSH_CPU_WAIT_S = 5.0


def run_swarm(
    *,
    port: int,
    key: str,
    tokens: list[str],
    tasks: int,
    warmup: float,
    duration: float,
    profiler: DaphneServer | None,
    think_s: float = 0.0,
    concurrency: int = 1,
    servers: dict[str, int] | None = None,
    sql_dir: Path | None = None,
    swarm_procs: int = 1,
) -> dict[str, Any]:
    """Connect the workers (over ``swarm_procs`` processes), start a job, measure a steady
    window, stop everything."""
    base = f"http://127.0.0.1:{port}"
    payloads = [
        {"url": base, "first": first, "tokens": share}
        | {"think_s": think_s, "concurrency": concurrency, "tasks": tasks}
        for first, share in shares(tokens, swarm_procs)
    ]
    swarm = SwarmProcesses(EdgeSwarm, payloads)
    try:
        swarm.start()
        connect_start = time.perf_counter()
        welcomed = swarm.connect()
        connect_seconds = time.perf_counter() - connect_start
        if welcomed < len(tokens):
            print(f"warning: {welcomed}/{len(tokens)} welcomed", file=sys.stderr)

        job = api(
            base,
            key,
            "POST",
            "/api/v1/jobs/",
            {
                "name": f"bench {len(tokens)}",
                "kernel": "montecarlo_pi",
                "range_start": 0,
                "range_end": tasks * CHUNK,
                "chunk_size": CHUNK,
                "seed": SEED,
                "quorum": 2,
                "start": False,
            },
        )
        # Warm every Daphne's HTTP path (a process's first request imports and builds what
        # views need, ~0.1 s): with several Daphnes on one port the start request lands on any
        # of them, and push latency is the dispatch plane's, not a cold process's first request.
        for _ in range(HTTP_WARMUP_REQUESTS):
            api(base, key, "GET", f"/api/v1/jobs/{job['id']}/")
        time.sleep(0.5)
        conn = psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}", autocommit=True)
        # CPU of every process from the start request until every worker read its first assign
        # (or PUSH_CPU_WAIT_S): with ~1 s tasks no result comes back meanwhile, so that is what
        # the push costs, and how much of the two cores' time it had.
        push_cpu_before = cpu_snapshot(conn, servers or {})
        push_cpu_before["swarm"] = cpu_seconds(swarm.pids)
        t_start = time.time()
        api(base, key, "POST", f"/api/v1/jobs/{job['id']}/start/")
        t_started = time.time()
        deadline = time.monotonic() + PUSH_CPU_WAIT_S
        while swarm.count(FIRST_FRAMES) < len(tokens) and time.monotonic() < deadline:
            time.sleep(0.005)
        t_pushed = time.time()
        push_cpu_after = cpu_snapshot(conn, servers or {})
        push_cpu_after["swarm"] = cpu_seconds(swarm.pids)
        push_backends = backends_cpu(conn, push_cpu_before, push_cpu_after)
        # Wait (bounded) until nearly every worker has had its first assignment, then warm up.
        deadline = time.monotonic() + 180
        while swarm.count(FIRST_FRAMES) < 0.95 * len(tokens) and time.monotonic() < deadline:
            time.sleep(0.1)
        t_all_busy = time.time()
        time.sleep(warmup)
        if profiler is not None:
            profiler.process.send_signal(signal.SIGUSR1)
        cpu_before = cpu_snapshot(conn, servers or {})
        cpu_before["swarm"] = cpu_seconds(swarm.pids)
        sql_before = sql_totals(sql_dir) if sql_dir is not None else {}
        before = pg_stats(conn)
        reads_before = pg_reads(conn)
        time.sleep(duration)
        if profiler is not None:
            profiler.process.send_signal(signal.SIGUSR2)
        after = pg_stats(conn)
        reads_after = pg_reads(conn)
        cpu_after = cpu_snapshot(conn, servers or {})
        cpu_after["swarm"] = cpu_seconds(swarm.pids)
        sql_after = sql_totals(sql_dir) if sql_dir is not None else {}
        remaining = conn.execute(
            "SELECT count(*) FROM jobs_task WHERE job_id = %s AND status = 'open'", (job["id"],)
        ).fetchone()[0]
        reports = swarm.stop()
        conn.close()
    finally:
        swarm.kill()

    # The loop lag that matters is the children's while the first assigns arrive: a late loop
    # reads an assign late, so the push figures include it.
    merged = merge_reports(reports, t0=t_start, lag_window=(t_start, t_all_busy))
    window = after["t"] - before["t"]
    validated = after["valid"] - before["valid"]
    in_window = [lat for t, lat in merged["turnaround"] if before["t"] <= t <= after["t"]]
    credits = sum(1 for t in merged["credits"] if before["t"] <= t <= after["t"])
    push = list(merged["first_frame_s"].values())
    per = max(validated, 1.0)
    return {
        "connections": len(tokens),
        "swarm_procs": len(payloads),
        "welcomed": merged["welcomed"],
        "connect_seconds": round(connect_seconds, 2),
        "tasks": tasks,
        "tasks_open_at_end": remaining,
        "seconds_until_95pct_assigned": round(t_all_busy - t_start, 2),
        "window_seconds": round(window, 2),
        "validated_replicas": int(validated),
        "replicas_per_second": validated / window,
        "credits_per_second": credits / window,
        "t_start_wall": t_start,
        "push_received_s": push,
        # p99 is the worst process's; per_process has each one's p50 / p99 / max.
        "swarm_loop_lag_ms": merged["loop_lag_ms"],
        "push_latency_ms": {
            "workers": len(push),
            "p50": pct(push, 50),
            "p99": pct(push, 99),
            "max": max(push) * 1000 if push else None,
            "start_request_ms": (t_started - t_start) * 1000,
        },
        "turnaround_ms": {
            "samples": len(in_window),
            "p50": pct(in_window, 50),
            "p99": pct(in_window, 99),
            "mean": statistics.fmean(in_window) * 1000 if in_window else None,
        },
        "push_cpu": {
            "wall_ms": round((t_pushed - t_start) * 1000, 1),
            # CPU milliseconds by process over that wall time (two cores give twice the wall).
            "cpu_ms": cpu_per_replica(push_cpu_before, push_cpu_after, 1.0),
            "postgresql_backends": push_backends,
        },
        "think_ms": think_s * 1000,
        "concurrency": concurrency,
        "cpu_ms_per_replica": cpu_per_replica(cpu_before, cpu_after, per),
        # Totals are written twice a second: the window's edges are good to about half a second.
        "sql_statements_per_replica": sql_per_replica(sql_before, sql_after, per),
        "job_id": job["id"],
        "per_validated_replica": {
            k: (after[k] - before[k]) / per
            for k in ("xact_commit", "xact_rollback", "sessions", "tup_returned", "tup_fetched")
            + ("tup_inserted", "tup_updated", "blks_hit")
        },
        # Which tables and indexes the window's statements read, rows per validated replica
        # (the statistics views report with a delay of up to a second).
        "rows_read_per_replica": reads_per_replica(reads_before, reads_after, per),
        "events": merged["events"],
    }


# ---------------------------------------------------------------- scenarios


def scenario(
    n: int,
    *,
    duration: float,
    warmup: float,
    profile: bool = False,
    extra_env: dict[str, str] | None = None,
    label: str = "default",
    think_s: float = 0.0,
    concurrency: int = 1,
    daphnes: int = 1,
    swarm_procs: int | None = None,
) -> dict[str, Any]:
    """One run: fresh database, fresh servers (``daphnes`` > 1: the launcher), N workers over
    ``swarm_procs`` load-generator processes (None: ``default_swarm_procs``)."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    sql_dir = RESULTS.parent / f"sql-{os.getpid()}"
    env = {**bench_env(queue, extra_env), **sql_env(sql_dir), "CCGSC_BENCH_TRACE": "1"}
    fresh_database()
    flush_redis()
    key, tokens = make_fixtures(n)
    profile_out = RESULTS.parent / f"dispatch-profile-{n}.json" if profile else None
    if profile_out is not None:
        profile_out.unlink(missing_ok=True)
    if daphnes > 1:
        daphne = DaphneLauncher(processes=daphnes, env=env, log_dir=LOG_DIR)
        daphne.start()
    else:
        daphne = start_daphne(env, profile_out)
    port = daphne.port
    celery = start_celery(env, queue)
    # Enough tasks that the queue does not run dry during the window (tasks_open_at_end shows it).
    tasks = max(20_000 if duration > 10 else 10_000, int(1500 * (duration + warmup + 30)))
    try:
        result = run_swarm(
            port=port,
            key=key,
            tokens=tokens,
            tasks=tasks,
            warmup=warmup,
            duration=duration,
            profiler=daphne if profile else None,
            think_s=think_s,
            concurrency=concurrency,
            servers={"daphne": daphne.process.pid, "celery": celery.process.pid},
            sql_dir=sql_dir,
            swarm_procs=swarm_procs or default_swarm_procs(n),
        )
    finally:
        daphne.stop()
        celery.stop()
    # Checked with the servers stopped: no flush commits between the checks' statements.
    with psycopg.connect(
        f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}", autocommit=True
    ) as conn:
        result["invariants"] = invariants(conn, result["job_id"], 2)
    result["push_trace"] = push_trace(
        sql_dir, result.pop("t_start_wall"), result.pop("push_received_s")
    )
    result["label"] = label
    result["env"] = extra_env or {}
    result["daphnes"] = daphnes
    if profile_out is not None:
        deadline = time.monotonic() + 10
        while not profile_out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if profile_out.exists():
            result["profile"] = summarize_profile(
                json.loads(profile_out.read_text()), result["validated_replicas"]
            )
    return result


def summarize_profile(report: dict[str, Any], validated: int) -> dict[str, Any]:
    """The hottest server-side costs per thread and SQL statements per validated replica."""
    per = max(validated, 1)
    sql = report["sql"]
    statements = {
        k: {
            "per_replica": round(v["count"] / per, 3),
            "ms_per_replica": round(v["seconds"] * 1000 / per, 3),
        }
        for k, v in sql["statements"].items()
    }
    threads = {}
    for name, t in report["sampler"]["threads"].items():
        if t["busy"] == 0:
            continue
        threads[name] = {
            "busy_fraction": round(t["busy"] / max(t["samples"], 1), 3),
            "top_inclusive": [
                (fn, round(n / t["samples"], 3)) for fn, n in t["top_inclusive"][:25]
            ],
            "top_leaf": [(fn, round(n / t["samples"], 3)) for fn, n in t["top_leaf"][:12]],
        }
    return {
        "window_seconds": report["sampler"]["seconds"],
        "db_connections_per_replica": round(sql["connections_opened"] / per, 3),
        "statements_per_replica": round(
            sum(v["count"] for v in sql["statements"].values()) / per, 2
        ),
        "statements": statements,
        "threads": threads,
    }


def fmt(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table of the scenarios with the BOINC and target ratios."""
    head = [
        "config", "connections", "validated replicas/s", "credits/s", "push p50 ms",
        "push p99 ms", "swarm procs, loop lag p99 ms", "turnaround p50 ms", "turnaround p99 ms", "vs BOINC 102/s",
        "vs target 1000/s", "p99 ≤ 100 ms", "commits/replica", "SQL statements/replica", "PG sessions/replica",
        "CPU ms/replica Daphne, PG, Celery, swarm", "invariants",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        rate = r["replicas_per_second"]
        p99 = r["turnaround_ms"]["p99"]
        per = r["per_validated_replica"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    f"{r['welcomed']}/{r['connections']}",
                    fmt(rate, 1),
                    fmt(r["credits_per_second"], 1),
                    fmt(r["push_latency_ms"]["p50"]),
                    fmt(r["push_latency_ms"]["p99"]),
                    f"{r['swarm_procs']}, {fmt(r['swarm_loop_lag_ms']['p99'])}",
                    fmt(r["turnaround_ms"]["p50"], 1),
                    fmt(p99, 1),
                    f"{rate / BOINC_JOBS_PER_S:.2f}×",
                    f"{rate / TARGET_REPLICAS_PER_S:.2f}×",
                    "yes" if p99 is not None and p99 <= TARGET_P99_MS else "no",
                    fmt(per["xact_commit"], 3),
                    fmt(r["sql_statements_per_replica"]["total"], 2),
                    fmt(per["sessions"], 2),
                    "{daphne:.2f}, {postgresql:.2f}, {celery:.2f}, {swarm:.2f}".format(
                        **r["cpu_ms_per_replica"]
                    ),
                    "ok" if r["invariants"]["ok"] else "FAILED",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def profile_table(profile: dict[str, Any]) -> str:
    """Markdown summary of a profiled run."""
    lines = [
        f"DB connections opened per validated replica: {profile['db_connections_per_replica']}; "
        f"SQL statements per validated replica: {profile['statements_per_replica']}",
        "",
        "| statement | per replica | ms per replica |",
        "|---|---|---|",
    ]
    for k, v in list(profile["statements"].items())[:16]:
        lines.append(f"| `{k}` | {v['per_replica']} | {v['ms_per_replica']} |")
    for name, t in profile["threads"].items():
        lines += ["", f"thread `{name}`: busy {t['busy_fraction']:.0%} of samples", ""]
        lines += ["| function (inclusive) | share of samples |", "|---|---|"]
        for fn, share in t["top_inclusive"][:15]:
            lines.append(f"| `{fn}` | {share:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows (about 2 minutes)")
    parser.add_argument("--connections", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--duration", type=float, help="steady window in seconds")
    parser.add_argument("--warmup", type=float, help="seconds between job start and window")
    parser.add_argument(
        "--profile", action="store_true", help="one more profiled run at the largest N"
    )
    parser.add_argument(
        "--think-ms", type=float, default=0.0, help="how long each task takes (e.g. 1000)"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="slots per worker")
    parser.add_argument(
        "--per-item",
        action="store_true",
        help="turn group commit off (the per-message path, for before/after comparisons)",
    )
    parser.add_argument(
        "--daphnes", type=int, default=1, help="Daphne processes (more than one: the launcher)"
    )
    parser.add_argument(
        "--prefetch", type=int, default=None, help="CCGSC_DISPATCH_PREFETCH for the servers"
    )
    parser.add_argument(
        "--swarm-procs",
        type=int,
        default=None,
        help="load-generator processes the workers are spread over (default: 1 below 500 "
        "connections, else 4)",
    )
    parser.add_argument("--label", default=None, help="the table's config column")
    parser.add_argument(
        "--conn-max-age",
        type=int,
        default=None,
        help="one more run at the largest N with DATABASE_CONN_MAX_AGE set (persistent DB "
        "connections, a settings-only change)",
    )
    args = parser.parse_args(argv)
    duration = args.duration or (10.0 if args.quick else 30.0)
    warmup = args.warmup or (3.0 if args.quick else 5.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * max(args.connections) + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    base_env = {"CCGSC_DISPATCH_GROUP_COMMIT": "0" if args.per_item else "1"}
    if args.prefetch is not None:
        base_env["CCGSC_DISPATCH_PREFETCH"] = str(args.prefetch)
    label = args.label or ("per-item" if args.per_item else "group commit")
    label += f", think {args.think_ms:g} ms, slots {args.concurrency}, daphnes {args.daphnes}"
    if args.prefetch is not None:
        label += f", prefetch {args.prefetch}"
    env = bench_env("bench-setup")
    print("building the benchmark database ...", file=sys.stderr)
    build_template(env)
    django_setup(env)
    results = []
    try:
        for n in args.connections:
            print(f"dispatch: {n} connections ...", file=sys.stderr)
            results.append(
                scenario(
                    n,
                    duration=duration,
                    warmup=warmup,
                    extra_env=base_env,
                    label=label,
                    think_s=args.think_ms / 1000,
                    concurrency=args.concurrency,
                    daphnes=args.daphnes,
                    swarm_procs=args.swarm_procs,
                )
            )
        top = max(args.connections)
        if args.conn_max_age is not None:
            print(f"dispatch: {top} connections, CONN_MAX_AGE ...", file=sys.stderr)
            results.append(
                scenario(
                    top,
                    duration=duration,
                    warmup=warmup,
                    extra_env={**base_env, "DATABASE_CONN_MAX_AGE": str(args.conn_max_age)},
                    label=f"CONN_MAX_AGE={args.conn_max_age}",
                    swarm_procs=args.swarm_procs,
                )
            )
        if args.profile:
            print(f"dispatch: {top} connections, profiled ...", file=sys.stderr)
            results.append(
                scenario(
                    top,
                    duration=min(duration, 15.0),
                    warmup=warmup,
                    profile=True,
                    label="profiled",
                    swarm_procs=args.swarm_procs,
                )
            )
    finally:
        _close_django()
        drop_database(DB_NAME)
        drop_database(TEMPLATE)
    print(table(results))
    for r in results:
        if "profile" in r:
            print()
            print(profile_table(r["profile"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "quick": args.quick,
        "boinc_jobs_per_second": BOINC_JOBS_PER_S,
        "target": {
            "replicas_per_second": TARGET_REPLICAS_PER_S,
            "p99_ms": TARGET_P99_MS,
            "connections": TARGET_CONNECTIONS,
        },
        "chunk_samples": CHUNK,
        "runs": results,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
