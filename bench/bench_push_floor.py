#!/usr/bin/env python3
"""The push floor: this machine's least time for "N sockets each get one frame after one trigger".

No database and no dispatch: ``--daphnes`` Daphne processes share one listening socket (as the
launcher runs them) and serve ``bench/push_floor_app.py``, whose websockets, on each message to
one Redis channel-layer group, send a pre-built ~400-byte frame shaped like an ``assign``
(``--fanout process``: the group holds one channel per Daphne process, which sends to all its
sockets, as the site's wake does; ``socket``: one channel per socket). The clients are bare ``websockets`` connections spread over ``--swarm-procs``
load-generator processes (``bench/swarm.py``, the dispatch bench's swarm). For every (connections,
swarm processes) pair, ``--rounds`` triggers are sent one after the other (the next once every
frame of the last arrived, then a pause); a socket's k-th frame answers the k-th trigger.
Measured: the time from just before the trigger's ``group_send`` to each frame's read (p50 / p99
over every round's frames, and each round's p99), frames that never came, and each swarm
process's event-loop lag over the rounds (p99 of the worst process), and the CPU per frame of the
Daphnes and of the load generator over the rounds (from ``/proc``). This is what the dispatch
bench's push p99 cannot go below on the same machine with the load generator sharing its cores.

Usage: python bench/bench_push_floor.py [--quick] [--connections 100 1000] [--swarm-procs 1 4]
           [--daphnes 2] [--rounds 5]
Writes bench/results/push_floor.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "edge_worker"))

from dispatch_probes import cpu_seconds, pct  # noqa: E402 - after the path setup
from swarm import (  # noqa: E402
    FRAMES,
    Recorder,
    SwarmProcesses,
    merge_reports,
    round_latencies,
    shares,
)

from scripts.daphne_launcher import DAPHNE_OPTIONS, listening_socket  # noqa: E402

RESULTS = BENCH / "results" / "push_floor.json"
LOG_DIR = BENCH / "results" / "logs"
# The dispatch bench's Redis database index (the same variable), flushed before every run.
REDIS_URL = f"redis://127.0.0.1:6379/{int(os.environ.get('CCGSC_BENCH_REDIS_DB', '9'))}"
ROUND_TIMEOUT_S = 10.0
PAUSE_S = 0.5
HANDSHAKE_ATTEMPTS = 3  # between a round's last frame and the next trigger


class FloorSockets:
    """One swarm process's share of bare websockets (``payload``: url, first index, count),
    each recording every frame it reads."""

    def __init__(self, payload: dict[str, Any], recorder: Recorder) -> None:
        recorder.keep_every_frame = True
        self.recorder = recorder
        self.url = payload["url"]
        self.indexes = range(payload["first"], payload["first"] + payload["count"])
        self.runs: list[asyncio.Task] = []

    async def _socket(self, i: int) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake

        # A handshake a loaded server drops is tried again (as the edge worker's backoff does);
        # a socket that never opens is counted in the events.
        for attempt in range(HANDSHAKE_ATTEMPTS):
            try:
                ws = await connect(self.url, max_size=None, open_timeout=60)
            except (OSError, InvalidHandshake, TimeoutError):
                if attempt == HANDSHAKE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            async with ws:
                self.recorder.welcome(i)
                async for _ in ws:
                    self.recorder.frame(i)
            return

    async def connect(self) -> None:
        """Open the sockets fifty at a time, each batch once the previous one is open."""
        batch = 50
        for start in range(0, len(self.indexes), batch):
            self.runs += [
                asyncio.create_task(self._socket(i)) for i in self.indexes[start : start + batch]
            ]
            deadline = time.monotonic() + 60
            while len(self.recorder.welcomed) < len(self.runs) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        failed = [task for task in self.runs if task.done()]
        for task in failed:
            self.recorder.event(f"closed: {task.exception()!r}")

    async def stop(self) -> None:
        for task in self.runs:
            task.cancel()
        await asyncio.gather(*self.runs, return_exceptions=True)


class FloorServers:
    """``processes`` Daphnes on one inherited listening socket, serving the floor app."""

    def __init__(self, processes: int, fanout: str, write: str = "immediate") -> None:
        self.fanout = fanout
        self.write = write
        self.trace_dir = LOG_DIR / f"push-floor-trace-{os.getpid()}"
        self.sock = listening_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.processes = processes
        self.children: list[tuple[subprocess.Popen, Path]] = []

    def start(self, timeout_s: float = 60) -> None:
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        for old in self.trace_dir.glob("floor-*.json"):
            old.unlink()
        env = {
            **os.environ,
            "CCGSC_FLOOR_REDIS_URL": REDIS_URL,
            "CCGSC_FLOOR_FANOUT": self.fanout,
            "CCGSC_FLOOR_WRITE": self.write,
            "CCGSC_FLOOR_TRACE_DIR": str(self.trace_dir),
            "PYTHONPATH": os.pathsep.join(
                [str(BENCH), str(ROOT), os.environ.get("PYTHONPATH", "")]
            ),
        }
        fd = self.sock.fileno()
        command = [sys.executable, "-m", "daphne", *DAPHNE_OPTIONS, "--fd", str(fd)]
        for n in range(self.processes):
            log_path = LOG_DIR / f"push-floor-daphne-{os.getpid()}-{n}.log"
            with log_path.open("wb") as log:
                child = subprocess.Popen(
                    [*command, "push_floor_app:application"],
                    cwd=BENCH,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(fd,),
                )
            self.children.append((child, log_path))
        deadline = time.monotonic() + timeout_s
        for child, log_path in self.children:
            while "Listening on TCP address" not in log_path.read_text(errors="replace"):
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"a floor Daphne did not start:\n{log_path.read_text()}")
                time.sleep(0.1)

    def traces(self, triggers: list[float]) -> dict[str, Any]:
        """The Daphnes' side of each round (process fan-out), in ms after the trigger: when
        the first and the last process read the message, and when the last frame was handed
        to Daphne; and how many sockets each process held."""
        runs = []
        for path in sorted(self.trace_dir.glob("floor-*.json")):
            with contextlib.suppress(OSError, ValueError):
                runs.append(json.loads(path.read_text())["pushes"])
        rounds = []
        for k, sent in enumerate(triggers):
            pushes = [pushes[k] for pushes in runs if len(pushes) > k]
            if not pushes:
                continue
            read = [(p[0] - sent) * 1000 for p in pushes]
            rounds.append(
                {
                    "read_first": round(min(read), 1),
                    "read_last": round(max(read), 1),
                    "last_frame_handed": round(max((p[1] - sent) * 1000 for p in pushes), 1),
                }
            )
        return {"sockets_per_daphne": [p[0][2] for p in runs if p], "rounds": rounds}

    def stop(self) -> None:
        for child, _ in self.children:
            child.terminate()
        for child, _ in self.children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)
        self.sock.close()


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


async def trigger_rounds(swarm: SwarmProcesses, connections: int, rounds: int) -> list[float]:
    """Send ``rounds`` group messages, each once the last one's frames all arrived (or
    ``ROUND_TIMEOUT_S`` passed) and a pause; the wall time just before each send."""
    from channels_redis.core import RedisChannelLayer

    os.environ["CCGSC_FLOOR_REDIS_URL"] = REDIS_URL  # the app's settings, read on import
    from push_floor_app import GROUP

    layer = RedisChannelLayer(hosts=[REDIS_URL], capacity=1500, expiry=30)
    sent: list[float] = []
    frames_before = swarm.count(FRAMES)
    for k in range(rounds):
        await asyncio.sleep(PAUSE_S)
        sent.append(time.time())
        await layer.group_send(GROUP, {"type": "floor.push"})
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        while swarm.count(FRAMES) - frames_before < connections * (k + 1):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
    await layer.flush()
    return sent


def floor_run(
    connections: int,
    swarm_procs: int,
    *,
    daphnes: int,
    rounds: int,
    fanout: str,
    write: str = "immediate",
) -> dict[str, Any]:
    """One (connections, swarm processes) pair on fresh servers and a flushed Redis."""
    flush_redis()
    servers = FloorServers(daphnes, fanout, write)
    servers.start()
    load_before = os.getloadavg()
    url = f"ws://127.0.0.1:{servers.port}/"
    payloads = [
        {"url": url, "first": first, "count": len(share)}
        for first, share in shares(list(range(connections)), swarm_procs)
    ]
    swarm = SwarmProcesses(FloorSockets, payloads)
    try:
        swarm.start()
        opened = swarm.connect()
        daphne_pids = [child.pid for child, _ in servers.children]
        cpu_before = cpu_seconds(daphne_pids), cpu_seconds(swarm.pids)
        triggers = asyncio.run(trigger_rounds(swarm, connections, rounds))
        finished = time.time()
        cpu_after = cpu_seconds(daphne_pids), cpu_seconds(swarm.pids)
        reports = swarm.stop()
        server_side = servers.traces(triggers)
    finally:
        swarm.kill()
        servers.stop()
    merged = merge_reports(reports, t0=triggers[0], lag_window=(triggers[0], finished))
    per_round = round_latencies(merged["frames"], triggers)
    every = [s for latencies in per_round for s in latencies]
    return {
        "connections": connections,
        "swarm_procs": len(payloads),
        "daphnes": daphnes,
        "fanout": fanout,
        "write": write,
        "opened": opened,
        "rounds": rounds,
        "frames_missing": connections * rounds - len(every),
        "latency_ms": {
            "p50": pct(every, 50),
            "p99": pct(every, 99),
            "max": max(every) * 1000 if every else None,
            "p99_by_round": [pct(latencies, 99) for latencies in per_round],
        },
        "swarm_loop_lag_ms": merged["loop_lag_ms"],
        # CPU over the rounds (their pauses included) per frame: what one frame's send costs
        # the Daphnes and its read the load generator, with no application work around them.
        "cpu_us_per_frame": {
            name: round((after - before) * 1e6 / max(1, connections * rounds), 1)
            for name, before, after in zip(("daphne", "swarm"), cpu_before, cpu_after, strict=True)
        },
        "daphnes_ms": server_side,
        "events": merged["events"],
        "load_average_before_after": [load_before, os.getloadavg()],
    }


def fmt(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table of the runs."""
    head = [
        "connections", "swarm procs", "Daphnes", "fan-out", "writes", "frames", "p50 ms", "p99 ms", "max ms",
        "p99 by round ms", "last frame handed to Daphne by round ms", "swarm loop lag p99 ms (worst process)", "CPU µs per frame: Daphne, swarm", "load before → after",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        latency = r["latency_ms"]
        before, after = r["load_average_before_after"]
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{r['opened']}/{r['connections']}",
                    str(r["swarm_procs"]),
                    str(r["daphnes"]),
                    r["fanout"],
                    r.get("write", "immediate"),
                    f"{r['connections'] * r['rounds'] - r['frames_missing']}"
                    f"/{r['connections'] * r['rounds']}",
                    fmt(latency["p50"], 1),
                    fmt(latency["p99"], 1),
                    fmt(latency["max"], 1),
                    ", ".join(fmt(p) for p in latency["p99_by_round"]),
                    ", ".join(fmt(x["last_frame_handed"]) for x in r["daphnes_ms"]["rounds"])
                    or "n/a",
                    fmt(r["swarm_loop_lag_ms"]["p99"], 1),
                    ", ".join(fmt(v) for v in r.get("cpu_us_per_frame", {}).values()) or "n/a",
                    f"{before[0]:.2f} → {after[0]:.2f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--connections", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--swarm-procs", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--daphnes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="triggers per run (default 5)")
    parser.add_argument(
        "--fanout",
        choices=["process", "socket"],
        default="process",
        help="group members: one channel per Daphne process (as the site's wake), or per socket",
    )
    parser.add_argument(
        "--writes",
        nargs="+",
        choices=["immediate", "twisted"],
        default=["immediate", "twisted"],
        help="how Daphne's connections send: at once when nothing is buffered (the site's,"
        " ccgsc_site.immediate_write) or on the loop's next turn (Twisted's own); each pair runs"
        " once per choice, alternating",
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    results = []
    for connections in args.connections:
        for swarm_procs in args.swarm_procs:
            for write in args.writes:
                print(
                    f"push floor: {connections} sockets, {swarm_procs} swarm processes,"
                    f" {write} writes ...",
                    file=sys.stderr,
                )
                results.append(
                    floor_run(
                        connections,
                        swarm_procs,
                        daphnes=args.daphnes,
                        rounds=rounds,
                        fanout=args.fanout,
                        write=write,
                    )
                )
    print(table(results))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {"quick": args.quick, "runs": results}
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["frames_missing"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
