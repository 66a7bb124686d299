"""A load generator spread over several processes, for the benchmarks that push to many sockets.

One asyncio process running ~1,000 clients lags a quarter of a second while messages flow, and
a late loop reads a frame late: the latency the benchmark reports then includes the load
generator's own queueing. ``SwarmProcesses`` starts K children (multiprocessing, spawn), each
building its share of the clients with a ``factory`` (a picklable callable: ``factory(payload,
recorder)`` returns an object with ``async connect()`` and ``async stop()``), connecting them
when the parent says so, and handing back what its ``Recorder`` saw when the parent says stop.

Time base: every timestamp is ``time.time()`` (CLOCK_REALTIME). The children and the parent run
on the same machine and read the same clock, as do the servers' push traces
(``sqlcount/push_trace.py``); a run lasts seconds to minutes, so a clock step is the only risk,
and it would show as an absurd latency rather than a plausible one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from dispatch_probes import pct

WELCOMED, FIRST_FRAMES, FRAMES = 0, 1, 2  # the progress counters every child shares
LOOP_LAG_PERIOD_S = 0.005


def raise_open_files() -> int:
    """Raise this process's soft open-files limit to its hard limit; returns the new limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def default_swarm_procs(connections: int) -> int:
    """One load-generator process below 500 connections, four from there."""
    return 1 if connections < 500 else 4


def shares(items: list[Any], parts: int) -> list[tuple[int, list[Any]]]:
    """``items`` cut into ``parts`` contiguous shares, each with the index of its first item."""
    size = max(1, -(-len(items) // parts))
    return [(start, items[start : start + size]) for start in range(0, len(items), size)]


async def loop_lag(lags: list[tuple[float, float]], period_s: float = LOOP_LAG_PERIOD_S) -> None:
    """How late this event loop wakes from a short sleep, as (wall time, seconds late) pairs,
    until cancelled."""
    while True:
        began = time.perf_counter()
        wall = time.time()
        await asyncio.sleep(period_s)
        lags.append((wall, time.perf_counter() - began - period_s))


@dataclass
class Recorder:
    """What one child's clients saw, by global client index, on the wall clock."""

    progress: Any = None  # a shared array of counters (WELCOMED, FIRST_FRAMES, FRAMES), or None
    welcomed: dict[int, float] = field(default_factory=dict)
    frames: dict[int, list[float]] = field(default_factory=dict)
    sent_at: dict[int, float] = field(default_factory=dict)
    turnaround: list[tuple[float, float]] = field(default_factory=list)
    credits: list[float] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    keep_every_frame: bool = False

    def _count(self, which: int) -> None:
        if self.progress is not None:
            with self.progress.get_lock():
                self.progress[which] += 1

    def event(self, name: str) -> None:
        self.events[name] = self.events.get(name, 0) + 1

    def welcome(self, i: int) -> None:
        if i not in self.welcomed:
            self.welcomed[i] = time.time()
            self._count(WELCOMED)

    def frame(self, i: int) -> None:
        """Client ``i`` read a frame (an ``assign``): its first, or a later one."""
        now = time.time()
        seen = self.frames.setdefault(i, [])
        if not seen:
            seen.append(now)
            self._count(FIRST_FRAMES)
        elif self.keep_every_frame:
            seen.append(now)
        self._count(FRAMES)
        sent = self.sent_at.pop(i, None)
        if sent is not None:
            self.turnaround.append((now, now - sent))

    def result_sent(self, i: int) -> None:
        self.sent_at[i] = time.time()

    def credit(self, validated: int) -> None:
        self.credits.extend([time.time()] * validated)

    def report(self, lags: list[tuple[float, float]]) -> dict[str, Any]:
        return {
            "welcomed": self.welcomed,
            "frames": self.frames,
            "turnaround": self.turnaround,
            "credits": self.credits,
            "events": self.events,
            "lags": lags,
        }


def child_main(conn: Connection, progress: Any, factory: Callable, payload: Any) -> None:
    """A child process: build the clients, connect on "connect", report on "stop"."""
    raise_open_files()
    asyncio.run(_child(conn, progress, factory, payload))


async def _child(conn: Connection, progress: Any, factory: Callable, payload: Any) -> None:
    recorder = Recorder(progress)
    lags: list[tuple[float, float]] = []
    probe = asyncio.create_task(loop_lag(lags))
    clients = factory(payload, recorder)
    conn.send("ready")
    await asyncio.to_thread(conn.recv)  # "connect"
    await clients.connect()
    conn.send(len(recorder.welcomed))
    await asyncio.to_thread(conn.recv)  # "stop"
    await clients.stop()
    probe.cancel()
    conn.send(recorder.report(lags))


class SwarmProcesses:
    """K child processes, each with its share of the clients (``payloads``, one per child)."""

    def __init__(self, factory: Callable, payloads: list[Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.progress: list[Any] = []
        self.processes: list[Any] = []
        for payload in payloads:
            parent_end, child_end = context.Pipe()
            counters = context.Array("q", 3)
            self.conns.append(parent_end)
            self.progress.append(counters)
            self.processes.append(
                context.Process(
                    target=child_main, args=(child_end, counters, factory, payload), daemon=True
                )
            )

    def start(self, timeout_s: float = 120) -> None:
        """Start every child and wait until each has built its clients."""
        for process in self.processes:
            process.start()
        for conn in self.conns:
            self._recv(conn, timeout_s)

    def connect(self, timeout_s: float = 600) -> int:
        """Tell every child to connect its clients; how many were welcomed, once all are done."""
        for conn in self.conns:
            conn.send("connect")
        return sum(self._recv(conn, timeout_s) for conn in self.conns)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def count(self, which: int) -> int:
        """A progress counter summed over the children (``WELCOMED``, ``FIRST_FRAMES``...)."""
        return sum(counters[which] for counters in self.progress)

    def stop(self, timeout_s: float = 120) -> list[dict[str, Any]]:
        """Tell every child to stop its clients; their reports."""
        for conn in self.conns:
            conn.send("stop")
        reports = [self._recv(conn, timeout_s) for conn in self.conns]
        for process in self.processes:
            process.join(timeout=30)
        return reports

    def kill(self) -> None:
        """Stop children that are still running (after a failure)."""
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join(timeout=5)

    def _recv(self, conn: Connection, timeout_s: float) -> Any:
        if not conn.poll(timeout_s):
            raise TimeoutError(f"a swarm process did not answer within {timeout_s:.0f} s")
        return conn.recv()


def merge_reports(
    reports: list[dict[str, Any]], *, t0: float, lag_window: tuple[float, float]
) -> dict[str, Any]:
    """The children's reports as one swarm's: first-frame times in seconds after ``t0`` (by
    client), turnaround samples and credits sorted by time, event counts summed, and each
    child's loop lag inside ``lag_window`` (wall times) with p99 as the worst child's."""
    first_frame_s: dict[int, float] = {}
    frames: dict[int, list[float]] = {}
    welcomed = 0
    turnaround: list[tuple[float, float]] = []
    credits: list[float] = []
    events: dict[str, int] = {}
    per_process = []
    lo, hi = lag_window
    for report in reports:
        welcomed += len(report["welcomed"])
        for i, times in report["frames"].items():
            frames[int(i)] = list(times)
            first_frame_s[int(i)] = times[0] - t0
        turnaround += [tuple(sample) for sample in report["turnaround"]]
        credits += report["credits"]
        for name, n in report["events"].items():
            events[name] = events.get(name, 0) + n
        lags = [lag for t, lag in report["lags"] if lo <= t <= hi]
        per_process.append(
            {
                "samples": len(lags),
                "p50": pct(lags, 50),
                "p99": pct(lags, 99),
                "max": max(lags) * 1000 if lags else None,
            }
        )
    p99s = [p["p99"] for p in per_process if p["p99"] is not None]
    maxima = [p["max"] for p in per_process if p["max"] is not None]
    return {
        "welcomed": welcomed,
        "first_frame_s": dict(sorted(first_frame_s.items())),
        "frames": dict(sorted(frames.items())),
        "turnaround": sorted(turnaround),
        "credits": sorted(credits),
        "events": events,
        "loop_lag_ms": {
            "p99": max(p99s) if p99s else None,
            "max": max(maxima) if maxima else None,
            "per_process": per_process,
        },
    }


def round_latencies(frames: dict[int, list[float]], triggers: list[float]) -> list[list[float]]:
    """Seconds from each trigger to each client's frame of that round (a client's k-th frame
    answers the k-th trigger; a missing frame is left out of its round)."""
    return [
        [times[k] - sent for times in frames.values() if len(times) > k]
        for k, sent in enumerate(triggers)
    ]
