#!/usr/bin/env python3
"""Many sockets on one node, and one Daphne killed under them.

Opens ``--sockets`` (default 10,000) real ``ccgsc_worker`` clients, spread over ``--clients``
client processes (each raises its open-files limit up to the hard limit), against the Daphne
launcher's ``--daphnes`` processes sharing one port, with PostgreSQL, Redis and a Celery worker
with beat (the lease sweeper). Tasks are long (``--think-ms``, default 30 s: the sockets are
idle-ish), so the servers hold sockets rather than push throughput. Measured:
- every client says hello and is welcomed (time to connect them all), and the Daphnes' CPU per
  connection meanwhile (handshake, hello and its flush, welcome);
- memory per socket: the Daphnes' resident memory after the connections minus before, divided
  by the sockets (and the clients' own, for sizing a load generator);
- a job is started: time until every worker holds a task (push p50 / p99 / max from the start
  request, across processes on one clock);
- one Daphne (the one with the most sockets) gets SIGKILL: how many workers it held, how long
  until they were all welcomed again by the others and held tasks again;
- after the run, with every server stopped, the dispatch invariants (``tests/invariants.py``).

Usage: python bench/bench_sockets.py [--sockets 10000] [--daphnes 3] [--clients 4]
           [--think-ms 30000] [--after-kill 30]
Writes bench/results/sockets.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "edge_worker"))

from swarm import raise_open_files  # noqa: E402 - after the path setup

RESULTS = ROOT / "bench" / "results" / "sockets.json"


def rss_kib(pid: int) -> int:
    """Resident memory of a process, KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def sockets_of(pid: int) -> int:
    """Open sockets of a process."""
    try:
        return sum(
            os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return 0


# ---------------------------------------------------------------- client process


async def client_main(args: argparse.Namespace) -> None:
    """One client process: its share of the workers, a status file every second."""
    from ccgsc_worker.client import Backoff, EdgeWorker
    from ccgsc_worker.kernel import KernelRunner

    tokens = json.loads(Path(args.tokens_file).read_text())
    wasm = (ROOT / "wasm" / "build" / "montecarlo_pi.wasm").read_bytes()
    sha256 = hashlib.sha256(wasm).hexdigest()
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{sha256}.wasm").write_bytes(wasm)  # no 2,500 fetches of the same module
    runner = KernelRunner(wasm, sha256)
    outputs: dict[bytes, bytes] = {}
    think_s = args.think_ms / 1000

    async def execute(assignment: Any) -> bytes:
        data = assignment.input_bytes()
        if data not in outputs:
            outputs[data] = runner.run(data)
        await asyncio.sleep(think_s)
        return outputs[data]

    welcomes = [0] * len(tokens)
    first_welcome = [0.0] * len(tokens)
    last_welcome = [0.0] * len(tokens)
    ramp_started_at = 0.0
    first_assign = [0.0] * len(tokens)
    assigned_since_welcome = [False] * len(tokens)
    last_connecting = [0.0] * len(tokens)

    def hook(i: int):  # noqa: ANN202
        def on_event(name: str, info: dict[str, Any]) -> None:
            now = time.time()
            if name == "connecting":
                last_connecting[i] = now
            elif name == "welcome":
                welcomes[i] += 1
                first_welcome[i] = first_welcome[i] or now
                last_welcome[i] = now
                assigned_since_welcome[i] = False
            elif name == "assign":
                if not first_assign[i]:
                    first_assign[i] = now
                assigned_since_welcome[i] = True

        return on_event

    base_rss_kib = rss_kib(os.getpid())
    workers = [
        EdgeWorker(
            args.url,
            token,
            1,
            executor=execute,
            inline_executor=True,
            kernel_cache_dir=cache,
            on_event=hook(i),
            capabilities={"cores": 1, "simd": True},
            backoff=Backoff(),  # the client's own: 0.5 s doubling to 30 s, jittered
        )
        for i, token in enumerate(tokens)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    runs: list[asyncio.Task] = []

    def status() -> None:
        Path(args.status_file + ".tmp").write_text(
            json.dumps(
                {
                    "workers": len(tokens),
                    "started": len(runs),
                    "welcomed": sum(1 for n in welcomes if n),
                    "reconnected": sum(1 for n in welcomes if n >= 2),
                    "assigned": sum(1 for t in first_assign if t),
                    "busy_now": sum(assigned_since_welcome),
                    # connecting again after a welcome: lost its socket, not yet welcomed back
                    "reconnecting_now": sum(
                        1
                        for c, w, n in zip(last_connecting, last_welcome, welcomes, strict=True)
                        if n and c > w
                    ),
                    "first_assign": [t for t in first_assign if t],
                    "last_rewelcome": max(
                        (t for t, n in zip(last_welcome, welcomes, strict=True) if n >= 2),
                        default=0,
                    ),
                    "rss_kib": rss_kib(os.getpid()),
                    "base_rss_kib": base_rss_kib,
                    "ramp_started_at": ramp_started_at,
                    "last_first_welcome": max(first_welcome),
                }
            )
        )
        os.replace(args.status_file + ".tmp", args.status_file)

    async def reporter() -> None:
        while True:
            status()
            await asyncio.sleep(1)

    report = asyncio.create_task(reporter())
    ramp_started_at = time.time()
    # Ramp: a batch at a time, each once the previous one is welcomed (or 20 s passed).
    for start in range(0, len(workers), args.ramp):
        runs += [asyncio.create_task(w.run()) for w in workers[start : start + args.ramp]]
        deadline = time.monotonic() + 20
        while sum(1 for n in welcomes if n) < len(runs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    await stop.wait()
    for w in workers:
        w.stop(abandon=True)
    _, pending = await asyncio.wait(runs, timeout=20)
    for task in pending:
        task.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    report.cancel()
    status()


# ---------------------------------------------------------------- coordinator


def statuses(files: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in files:
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(path.read_text()))
    return out


def total(files: list[Path], key: str) -> int:
    return sum(s[key] for s in statuses(files))


def wait_until(what: str, check: Any, timeout_s: float) -> float:
    """Poll ``check`` until true; seconds taken (raises after ``timeout_s``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.25)
    return time.monotonic() - start


def percentile_ms(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[k] * 1000, 1)


def coordinate(args: argparse.Namespace) -> dict[str, Any]:
    import bench_dispatch as bd
    import psycopg
    from dispatch_probes import cpu_seconds

    from tests.invariants import invariants
    from tests.servers import CeleryWorker, DaphneLauncher

    raise_open_files()
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    env = bd.bench_env(queue, {"CCGSC_DISPATCH_GROUP_COMMIT": "1"})
    print("building the benchmark database ...", file=sys.stderr)
    bd.build_template(bd.bench_env("bench-setup"))
    bd.django_setup(env)
    bd.fresh_database()
    bd.flush_redis()
    print(f"creating {args.sockets} contributors ...", file=sys.stderr)
    key, tokens = bd.make_fixtures(args.sockets)
    work = Path(tempfile.mkdtemp(prefix="bench-sockets-"))
    celery = CeleryWorker(queue, beat=True, env=env, log_dir=bd.LOG_DIR, start_timeout_s=180)
    celery.start()
    launcher = DaphneLauncher(
        processes=args.daphnes, env=env, log_dir=bd.LOG_DIR, start_timeout_s=180
    )
    launcher.start()
    clients: list[subprocess.Popen] = []
    files = [work / f"client-{i}.json" for i in range(args.clients)]
    result: dict[str, Any] = {"sockets": args.sockets, "daphnes": args.daphnes}
    job_id = None
    try:
        daphne_pids = launcher.daphne_pids()
        rss_before = {pid: rss_kib(pid) for pid in daphne_pids}
        baseline = {pid: sockets_of(pid) for pid in daphne_pids}
        cpu_before = cpu_seconds(daphne_pids)
        share = -(-len(tokens) // args.clients)
        for i in range(args.clients):
            tokens_file = work / f"tokens-{i}.json"
            tokens_file.write_text(json.dumps(tokens[i * share : (i + 1) * share]))
            clients.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--client",
                        "--url",
                        launcher.url,
                        "--tokens-file",
                        str(tokens_file),
                        "--status-file",
                        str(files[i]),
                        "--cache-dir",
                        str(work / f"kernels-{i}"),
                        "--think-ms",
                        str(args.think_ms),
                        "--ramp",
                        str(args.ramp),
                    ],  # fmt: skip
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT / "edge_worker")},
                )
            )
        print("connecting ...", file=sys.stderr)
        wait_until(
            "every socket welcomed",
            lambda: total(files, "welcomed") >= args.sockets,
            args.connect_timeout,
        )
        # From the first client's first connection (not its start-up) to the last welcome.
        done = statuses(files)
        result["connect_seconds"] = round(
            max(s["last_first_welcome"] for s in done) - min(s["ramp_started_at"] for s in done),
            1,
        )
        # The Daphnes' CPU for the connections: handshakes, hellos (their flushes), welcomes.
        result["daphne_cpu_ms_per_connection"] = round(
            (cpu_seconds(daphne_pids) - cpu_before) * 1000 / args.sockets, 3
        )
        time.sleep(3)  # settle, then measure memory
        per_daphne = {pid: sockets_of(pid) - baseline[pid] for pid in daphne_pids}
        rss_after = {pid: rss_kib(pid) for pid in daphne_pids}
        grown = sum(rss_after[p] - rss_before[p] for p in daphne_pids)
        result["sockets_per_daphne"] = list(per_daphne.values())
        result["daphne_rss_mib_before_after"] = [
            (round(rss_before[p] / 1024, 1), round(rss_after[p] / 1024, 1)) for p in daphne_pids
        ]
        result["daphne_kib_per_socket"] = round(grown / args.sockets, 1)
        client_rss = sum(s["rss_kib"] - s["base_rss_kib"] for s in statuses(files))
        result["client_kib_per_socket"] = round(client_rss / args.sockets, 1)

        print("starting a job ...", file=sys.stderr)
        base = launcher.url
        tasks = max(3 * args.sockets, 1000)
        job = bd.api(
            base, key, "POST", "/api/v1/jobs/",
            {
                "name": f"sockets {args.sockets}", "kernel": "montecarlo_pi", "range_start": 0,
                "range_end": tasks * bd.CHUNK, "chunk_size": bd.CHUNK, "seed": 42, "quorum": 2,
                "start": False, "lease_seconds": max(60, int(3 * args.think_ms / 1000)),
            },
        )  # fmt: skip
        job_id = job["id"]
        started_at = time.time()
        bd.api(base, key, "POST", f"/api/v1/jobs/{job_id}/start/")
        result["start_request_ms"] = round((time.time() - started_at) * 1000, 1)
        result["seconds_until_all_assigned"] = round(
            wait_until(
                "every worker assigned",
                lambda: total(files, "assigned") >= args.sockets,
                args.connect_timeout,
            ),
            1,
        )
        firsts = [t - started_at for s in statuses(files) for t in s["first_assign"]]
        result["push_ms"] = {
            "p50": percentile_ms(firsts, 50),
            "p99": percentile_ms(firsts, 99),
            "max": percentile_ms(firsts, 100),
        }

        victim = max(launcher.daphne_pids(), key=sockets_of)
        held = sockets_of(victim) - baseline.get(victim, 0)
        print(f"killing daphne {victim} holding {held} sockets ...", file=sys.stderr)
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        moved_before = total(files, "reconnected")
        # Until the victim's workers noticed (some reconnected), none is still reconnecting,
        # and every worker is busy again ("everyone busy" alone would pass before the clients
        # noticed the kill).
        try:
            moved = wait_until(
                "the victim's workers welcomed again and busy",
                lambda: (
                    time.time() - killed_at > 3
                    and total(files, "reconnected") > moved_before
                    and total(files, "reconnecting_now") == 0
                    and total(files, "busy_now") >= args.sockets
                ),
                args.connect_timeout,
            )
        except TimeoutError as exc:  # reported with what did happen, then the invariants
            moved = None
            result["kill_error"] = str(exc)
        rewelcome = max(s["last_rewelcome"] for s in statuses(files))
        result["kill"] = {
            "victim_sockets": held,
            "workers_reconnected": total(files, "reconnected") - moved_before,
            "reconnecting_at_the_end": total(files, "reconnecting_now"),
            "busy_at_the_end": total(files, "busy_now"),
            "seconds_until_all_welcomed_again": round(rewelcome - killed_at, 1),
            "seconds_until_all_busy_again": None if moved is None else round(moved, 1),
        }
        print("running on after the kill ...", file=sys.stderr)
        time.sleep(args.after_kill)
    finally:
        for client in clients:
            client.send_signal(signal.SIGTERM)
        for client in clients:
            try:
                client.wait(timeout=60)
            except subprocess.TimeoutExpired:
                client.kill()
        launcher.stop()
        celery.stop()
    if job_id is not None:
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:5432/{bd.DB_NAME}", autocommit=True
        ) as conn:
            result["invariants"] = invariants(conn, job_id, 2)
    bd._close_django()
    bd.drop_database(bd.DB_NAME)
    bd.drop_database(bd.TEMPLATE)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--daphnes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--think-ms", type=float, default=30_000)
    parser.add_argument("--after-kill", type=float, default=30, help="seconds run after a kill")
    parser.add_argument("--ramp", type=int, default=100, help="connections per client per step")
    parser.add_argument("--connect-timeout", type=float, default=600)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tokens-file", help=argparse.SUPPRESS)
    parser.add_argument("--status-file", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        raise_open_files()
        asyncio.run(client_main(args))
        return 0
    result = coordinate(args)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result.get("invariants", {}).get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
