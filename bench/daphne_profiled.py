#!/usr/bin/env python3
"""Daphne with a wall-clock stack sampler and an SQL statement counter, for bench_dispatch.

Usage: python bench/daphne_profiled.py <daphne arguments>
The environment variable CCGSC_BENCH_PROFILE_OUT names the JSON file written on SIGUSR2 (and at
exit if it was not written before); SIGUSR1 clears everything collected so far, so the report
covers exactly the window between the two signals. Every thread is sampled every CCGSC_BENCH_PROFILE_INTERVAL seconds (default
0.005); a sample whose innermost frame is a known wait (selector poll, queue get, lock wait) is
counted as idle. Every SQL statement run through Django is counted by kind and table, with its
time, and every new database connection is counted.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Innermost frames of a thread with nothing to do: an executor thread waiting for work, the
# event loop waiting in its selector. Every other sample counts as busy, including waits
# inside request handling (a database round trip, a blocking hop back to the event loop).
IDLE_LEAVES = {"concurrent/futures/thread.py:_worker", "selectors.py:select"}


def _idle(stack: tuple[str, ...]) -> bool:
    return not stack or any(stack[-1].endswith(leaf) for leaf in IDLE_LEAVES)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    try:
        return str(Path(filename).relative_to(ROOT))
    except ValueError:
        return Path(filename).name


class Sampler(threading.Thread):
    """Collects every thread's stack at a fixed interval."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.interval = interval
        self.stacks: collections.Counter[tuple[str, tuple[str, ...]]] = collections.Counter()
        self.samples = 0
        self.stopped = False
        self.started_at = time.monotonic()

    def run(self) -> None:
        me = threading.get_ident()
        while not self.stopped:
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                stack = []
                f: Any = frame
                while f is not None:
                    stack.append(f"{_short(f.f_code.co_filename)}:{f.f_code.co_name}")
                    f = f.f_back
                thread = re.sub(r"[-_]\d+(_\d+)?$", "", names.get(ident, "?"))
                self.stacks[(thread, tuple(reversed(stack)))] += 1
            self.samples += 1
            time.sleep(self.interval)

    def summary(self) -> dict[str, Any]:
        threads: dict[str, dict[str, Any]] = {}
        for (thread, stack), n in self.stacks.items():
            t = threads.setdefault(
                thread,
                {
                    "samples": 0,
                    "busy": 0,
                    "inclusive": collections.Counter(),
                    "leaf": collections.Counter(),
                },
            )
            t["samples"] += n
            if _idle(stack):
                continue
            t["busy"] += n
            t["leaf"][stack[-1]] += n
            for fn in set(stack):
                t["inclusive"][fn] += n
        out = {}
        for name, t in threads.items():
            out[name] = {
                "samples": t["samples"],
                "busy": t["busy"],
                "top_inclusive": t["inclusive"].most_common(40),
                "top_leaf": t["leaf"].most_common(25),
            }
        return {
            "interval_s": self.interval,
            "seconds": time.monotonic() - self.started_at,
            "sweeps": self.samples,
            "threads": out,
            "top_stacks": [
                {"thread": th, "count": n, "stack": list(st[-14:])}
                for (th, st), n in self.stacks.most_common(60)
                if not _idle(st)
            ],
        }


TABLE = re.compile(r'(?:FROM|UPDATE|INTO)\s+"?(\w+)"?', re.IGNORECASE)


class QueryCounter:
    """A Django execute wrapper counting statements by kind and first table."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.seconds: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.lock = threading.Lock()

    def __call__(self, execute, sql, params, many, context):  # noqa: ANN001, ANN204
        verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
        match = TABLE.search(sql)
        key = f"{verb} {match.group(1) if match else ''}".strip()
        if "FOR UPDATE" in sql.upper():
            key += " FOR UPDATE"
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = time.perf_counter() - start
            with self.lock:
                self.counts[key] += 1
                self.seconds[key] += elapsed

    def on_connection(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        with self.lock:
            self.connections += 1
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)

    def summary(self) -> dict[str, Any]:
        return {
            "connections_opened": self.connections,
            "statements": {
                k: {"count": n, "seconds": round(self.seconds[k], 4)}
                for k, n in self.counts.most_common()
            },
        }


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ccgsc_site.settings")
    import django

    django.setup()
    from django.db.backends.signals import connection_created

    counter = QueryCounter()
    connection_created.connect(counter.on_connection, weak=False)
    sampler = Sampler(float(os.environ.get("CCGSC_BENCH_PROFILE_INTERVAL", "0.005")))
    out = Path(os.environ["CCGSC_BENCH_PROFILE_OUT"])

    written = []

    def dump(*_: Any) -> None:
        if written:
            return
        written.append(True)
        sampler.stopped = True
        report = {"sampler": sampler.summary(), "sql": counter.summary()}
        out.write_text(json.dumps(report, indent=1) + "\n")

    def reset(*_: Any) -> None:
        sampler.stacks.clear()
        sampler.samples = 0
        sampler.started_at = time.monotonic()
        with counter.lock:
            counter.counts.clear()
            counter.seconds.clear()
            counter.connections = 0

    atexit.register(dump)
    signal.signal(signal.SIGUSR1, reset)
    signal.signal(signal.SIGUSR2, dump)
    sampler.start()
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(sys.argv[1:])


if __name__ == "__main__":
    main()
