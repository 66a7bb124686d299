#!/usr/bin/env python3
"""The Python edge worker's CPU per replica, without a network: what one ``EdgeWorker`` spends
on an ``assign``, its result and the ``ack`` and ``credit`` that answer it.

A load generator or a contributor's small device running the edge worker spends its CPU per
replica here: the frame's checks against the protocol definition, the session's state machine,
the driver's effects, the task pool, the result frame, the event hook. This drives the real
``SessionDriver`` of ``ccgsc_worker`` (session, driver, pool with an inline executor that
returns the task's output at once) through its transport seam, with the frames the server sends
(built by the server's own ``jobs.protocol``), ``--replicas`` times, and reports the CPU per
replica (median of ``--rounds`` rounds), beside the bare ``json.loads`` of the same three
frames for scale, and with ``--profile`` the top functions of a profile of one more round. The
WebSocket framing (the ``websockets`` library) is not included: it is the same per frame
whatever the worker does with it.

Usage: python bench/bench_edge_cycle.py [--quick] [--replicas 2000] [--rounds 5] [--profile]
Writes bench/results/edge_cycle.json.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "edge_worker"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ccgsc_site.settings")

from ccgsc_worker.driver import SessionDriver  # noqa: E402 - after the path setup
from ccgsc_worker.pool import TaskPool  # noqa: E402
from ccgsc_worker.session import Session  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "edge_cycle.json"
SHA256 = "ab" * 32
OUTPUT = bytes(16)


class Sink:
    """The transport: keeps the count of what the worker sent."""

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, message: str | bytes, /) -> None:
        self.sent += 1


def _frames(replicas: int) -> list[tuple[str, str, str]]:
    """(assign, ack, credit) texts as the server sends them."""
    from jobs import protocol as server

    job = uuid.uuid4()
    frames = []
    for i in range(replicas):
        assignment = uuid.uuid4()
        assign = server.assign_text(
            assignment=assignment,
            job=job,
            task=i,
            kernel_name="montecarlo_pi",
            kernel_version="1.0.0",
            kernel_sha256=SHA256,
            lo=i * 1000,
            hi=(i + 1) * 1000,
            seed=7,
            params=[],
            lease_ms=600_000,
            work_units=1000,
        )
        ack = server.encode(server.ack(assignment=assignment, status="accepted"))
        credit = server.encode(server.credit(validated=1, work_units=1000))
        frames.append((assign, ack, credit))
    return frames


def _welcome() -> str:
    from jobs import protocol as server

    return server.encode(
        server.welcome(
            worker=uuid.uuid4(), contributor=uuid.uuid4(), heartbeat_ms=600_000, outstanding=[]
        )
    )


async def _round(frames: list[tuple[str, str, str]]) -> tuple[float, int]:
    """One worker through ``frames``: (CPU seconds, messages sent)."""
    events: dict[str, int] = {}

    def on_event(name: str, info: dict[str, Any]) -> None:  # what a load generator counts
        events[name] = events.get(name, 0) + 1

    pool = TaskPool(1, None, executor=lambda assignment: OUTPUT, inline=True)  # type: ignore[arg-type]
    driver = SessionDriver(Session(concurrency=1, build_hello=lambda s, r: {}), pool, on_event)
    sink = Sink()
    await driver.attach(sink)
    await driver.handle_message(_welcome())
    hello_and_welcome = sink.sent
    began = time.process_time()
    for assign, ack, credit in frames:
        await driver.handle_message(assign)
        while pool.busy:  # the inline task runs on the loop
            await asyncio.sleep(0)
        await driver.handle_message(ack)
        await driver.handle_message(credit)
    cpu = time.process_time() - began
    driver.detach()  # the connection ends: its heartbeat timer stops
    await pool.aclose()
    if events.get("ack") != len(frames):
        raise RuntimeError(f"expected {len(frames)} acks, saw {events}")
    return cpu, sink.sent - hello_and_welcome


def _bare_decode_us(frames: list[tuple[str, str, str]]) -> float:
    """CPU µs per replica of ``json.loads`` of its three frames, nothing else."""
    began = time.process_time()
    for texts in frames:
        for text in texts:
            json.loads(text)
    return (time.process_time() - began) / len(frames) * 1e6


def measure(replicas: int, rounds: int) -> dict[str, Any]:
    """The worker's CPU per replica over ``rounds`` rounds of ``replicas`` each."""
    frames = _frames(replicas)
    per_replica, bare = [], []
    sent = 0
    for _ in range(rounds):
        cpu, sent = asyncio.run(_round(frames))
        per_replica.append(cpu / replicas * 1e6)
        bare.append(_bare_decode_us(frames))
    worker, floor = statistics.median(per_replica), statistics.median(bare)
    return {
        "replicas": replicas,
        "rounds": rounds,
        "messages_sent_per_replica": round(sent / replicas, 2),
        "cpu_us_per_replica": {
            "median": round(worker, 1),
            "min": round(min(per_replica), 1),
            "max": round(max(per_replica), 1),
        },
        "json_loads_us_per_replica": round(floor, 1),
        "worker_over_json_loads": round(worker / floor, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--replicas", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="500 replicas, 3 rounds")
    parser.add_argument("--profile", action="store_true", help="print the top functions")
    args = parser.parse_args(argv)
    replicas, rounds = (500, 3) if args.quick else (args.replicas, args.rounds)
    import django

    django.setup()
    report = measure(replicas, rounds)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        asyncio.run(_round(_frames(replicas)))
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    cpu = report["cpu_us_per_replica"]
    print(
        "| replicas | worker CPU µs per replica (assign, result, ack, credit) "
        "| json.loads of its 3 frames µs | ratio | messages sent |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {replicas} | {cpu['median']} ({cpu['min']}–{cpu['max']}) "
        f"| {report['json_loads_us_per_replica']} | {report['worker_over_json_loads']}× "
        f"| {report['messages_sent_per_replica']} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
