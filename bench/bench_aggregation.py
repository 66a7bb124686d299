#!/usr/bin/env python3
"""Aggregation: our streaming fold against Flower's aggregate_arrayrecords, and a round of
1,000 simulated clients.

Every case runs in its own process so peak memory is its own. Ours runs in the project's
interpreter; Flower's in var/flower-venv (created from bench/requirements-flower.txt when
missing, never in the project environment). In every case n updates of d float32 "arrive" one
at a time, generated from the same seeded generator into one reused buffer:

- ours: each update is folded into the float64 accumulator as it arrives (validation included);
  after the last arrival only ``finish()`` remains;
- Flower: each update is held as it would be on a Flower server (an ``ArrayRecord`` inside a
  ``RecordDict`` with its ``num-examples``); after the last arrival ``aggregate_arrayrecords``
  runs over all of them.

"After the last arrival" is the time from the last update being available to the aggregate
being ready (ours: folding that update + finish; Flower: aggregate_arrayrecords). Peak memory is
the process's peak RSS above its RSS just before the first update (the kernel's high-water mark
is reset there through /proc/self/clear_refs).

The 1,000-client round sends each update as 64 KiB little-endian chunks through
``StreamingFold.fold_chunks`` (the path stored updates take), checkpointing every 100 updates,
and reports the server's CPU per update and its memory.

A robust rule is measured too: the coordinate median at the smaller n, ours over a memmapped
spill read in blocks against Flower's FedMedian over replies in memory (heap peak from
tracemalloc, since the spill's mapped file pages count in RSS but are page cache).

Usage: python bench/bench_aggregation.py [--quick] [--only ours flower round median_ours ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FLOWER_VENV = ROOT / "var" / "flower-venv"
FLOWER_PYTHON = FLOWER_VENV / "bin" / "python"
CHUNK_BYTES = 64 * 1024

# numpy 2 imports numpy.random lazily (about 2.5 MiB): load it before any baseline is taken.
np.random.default_rng(0)


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _peak_kib() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        return False
    return True


def _arrivals(n: int, dimension: int, seed: int):
    """Yield (index, update f32[d], num_examples) from one reused buffer."""
    rng = np.random.default_rng(seed)
    buffer = np.empty(dimension, dtype=np.float32)
    counts = rng.integers(10, 600, n)
    for index in range(n):
        rng.standard_normal(dimension, dtype=np.float32, out=buffer)
        buffer *= 0.01
        yield index, buffer, int(counts[index])


def case_ours(n: int, dimension: int, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from jobs.aggregation import StreamingFold

    fold = StreamingFold(dimension)
    baseline = _rss_kib()
    reset = _reset_peak()
    # The next model's buffer is allocated and touched when the round opens (counted in peak
    # memory), so finish() after the last arrival does not page-fault 4 MB in.
    result = np.ones(dimension, dtype=np.float32)
    fold_ms: list[float] = []
    cpu_ms = 0.0
    for index, update, count in _arrivals(n, dimension, seed):
        cpu_start = time.process_time()
        start = time.perf_counter()
        fold.fold(f"client-{index}", update, count)
        fold_ms.append((time.perf_counter() - start) * 1e3)
        cpu_ms = (time.process_time() - cpu_start) * 1e3
    finish_ms = []
    for _ in range(5):  # finish() is repeatable; the median of five is less noisy than one
        cpu_start = time.process_time()
        start = time.perf_counter()
        result = fold.finish(out=result)
        finish_ms.append((time.perf_counter() - start) * 1e3)
        if len(finish_ms) == 1:
            cpu_ms += (time.process_time() - cpu_start) * 1e3
    return {
        "impl": "ours",
        "n": n,
        "d": dimension,
        # the last update's fold plus finish(); "typical" uses the median fold instead
        "after_last_ms": fold_ms[-1] + finish_ms[0],
        "after_last_typical_ms": statistics.median(fold_ms) + statistics.median(finish_ms),
        # CPU time of the same work: what remains after the last arrival without the waits
        # for a core that a loaded machine adds to the wall-clock figure
        "after_last_cpu_ms": cpu_ms,
        "last_fold_ms": fold_ms[-1],
        "first_finish_ms": finish_ms[0],
        "finish_ms_median": statistics.median(finish_ms),
        "fold_ms_median": statistics.median(fold_ms),
        "fold_ms_p99": sorted(fold_ms)[int(0.99 * (len(fold_ms) - 1))],
        "peak_mib": (_peak_kib() - baseline) / 1024,
        "peak_reset": reset,
        "checksum": float(result.astype(np.float64).sum()),
    }


def case_flower(n: int, dimension: int, seed: int) -> dict[str, Any]:
    import logging

    import flwr
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    logging.getLogger("flwr").setLevel(logging.ERROR)
    baseline = _rss_kib()
    reset = _reset_peak()
    records = []
    arrival_ms: list[float] = []
    for _, update, count in _arrivals(n, dimension, seed):
        start = time.perf_counter()
        records.append(
            RecordDict(
                {
                    "arrays": ArrayRecord([update]),  # serialised to bytes: the update is copied
                    "metrics": MetricRecord({"num-examples": count}),
                }
            )
        )
        arrival_ms.append((time.perf_counter() - start) * 1e3)
    cpu_start = time.process_time()
    start = time.perf_counter()
    aggregated = aggregate_arrayrecords(records, "num-examples")
    after_last_ms = (time.perf_counter() - start) * 1e3
    after_last_cpu_ms = (time.process_time() - cpu_start) * 1e3
    result = aggregated.to_numpy_ndarrays()[0]
    return {
        "impl": f"flower {flwr.__version__}",
        "n": n,
        "d": dimension,
        "after_last_ms": after_last_ms,
        "after_last_typical_ms": after_last_ms,
        "after_last_cpu_ms": after_last_cpu_ms,
        "fold_ms_median": statistics.median(arrival_ms),  # storing the reply, not folding
        "fold_ms_p99": sorted(arrival_ms)[int(0.99 * (len(arrival_ms) - 1))],
        "peak_mib": (_peak_kib() - baseline) / 1024,
        "peak_reset": reset,
        "checksum": float(np.asarray(result, dtype=np.float64).sum()),
    }


def case_round(n: int, dimension: int, seed: int) -> dict[str, Any]:
    """n simulated clients each upload a delta in 64 KiB chunks; the server folds the chunks."""
    sys.path.insert(0, str(ROOT))
    from jobs.aggregation import StreamingFold

    fold = StreamingFold(dimension)
    baseline = _rss_kib()
    reset = _reset_peak()
    result = np.ones(dimension, dtype=np.float32)  # allocated and touched when the round opens
    server_cpu_s = 0.0
    checkpoint_ms: list[float] = []
    wall_start = time.perf_counter()
    for index, update, count in _arrivals(n, dimension, seed):
        raw = memoryview(update.data).cast("B")  # the client's upload, never copied whole
        cpu_start = time.process_time()
        fold.fold_chunks(
            f"client-{index}",
            lambda raw=raw: (raw[i : i + CHUNK_BYTES] for i in range(0, len(raw), CHUNK_BYTES)),
            count,
        )
        if (index + 1) % 100 == 0:
            start = time.perf_counter()
            with open(os.devnull, "wb") as sink:
                fold.checkpoint(sink)
            checkpoint_ms.append((time.perf_counter() - start) * 1e3)
        server_cpu_s += time.process_time() - cpu_start
    finish_runs = []
    for _ in range(5):
        start = time.perf_counter()
        fold.finish(out=result)
        finish_runs.append((time.perf_counter() - start) * 1e3)
    finish_ms = statistics.median(finish_runs)
    return {
        "impl": "ours (chunks)",
        "n": n,
        "d": dimension,
        "server_cpu_ms_per_update": server_cpu_s * 1e3 / n,
        "checkpoint_ms_median": statistics.median(checkpoint_ms) if checkpoint_ms else None,
        "finish_ms": finish_ms,
        "peak_mib": (_peak_kib() - baseline) / 1024,
        "peak_reset": reset,
        "wall_s_including_client_simulation": time.perf_counter() - wall_start,
    }


def case_median_ours(n: int, dimension: int, seed: int) -> dict[str, Any]:
    """Coordinate median: updates spilled to a memmapped file as they arrive, median blockwise."""
    import tempfile
    import tracemalloc

    sys.path.insert(0, str(ROOT))
    from jobs.aggregation import UpdateSpill, coordinate_median

    spill_dir = ROOT / "var"
    spill_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=spill_dir) as directory:
        baseline = _rss_kib()
        reset = _reset_peak()
        tracemalloc.start()
        spill = UpdateSpill(Path(directory) / "round.npy", dimension=dimension, capacity=n)
        for index, update, count in _arrivals(n, dimension, seed):
            spill.append(f"client-{index}", update, count)
        spill.flush()
        start = time.perf_counter()
        result = coordinate_median(spill.updates)
        after_last_ms = (time.perf_counter() - start) * 1e3
        heap_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peak = _peak_kib()
    return {
        "impl": "ours (memmap spill, 8 MiB blocks)",
        "rule": "median",
        "n": n,
        "d": dimension,
        "after_last_ms": after_last_ms,
        "heap_peak_mib": heap_peak / 2**20,
        "peak_mib": (peak - baseline) / 1024,  # includes the spill's mapped file pages
        "peak_reset": reset,
        "checksum": float(result.astype(np.float64).sum()),
    }


def case_median_flower(n: int, dimension: int, seed: int) -> dict[str, Any]:
    """Flower's FedMedian.aggregate_train over the replies held in memory."""
    import logging
    import tracemalloc

    import flwr
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedMedian
    from flwr.supercore.task_identity import TaskIdentity

    logging.getLogger("flwr").setLevel(logging.ERROR)
    # Messages stamp the run and node they are created in; outside a ServerApp, set them.
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 1
    baseline = _rss_kib()
    reset = _reset_peak()
    tracemalloc.start()
    replies = [
        Message(
            content=RecordDict(
                {
                    "arrays": ArrayRecord([update]),
                    "metrics": MetricRecord({"num-examples": count}),
                }
            ),
            dst_node_id=index + 1,
            message_type="train",
        )
        for index, update, count in _arrivals(n, dimension, seed)
    ]
    start = time.perf_counter()
    aggregated, _ = FedMedian().aggregate_train(1, replies)
    after_last_ms = (time.perf_counter() - start) * 1e3
    heap_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result = aggregated.to_numpy_ndarrays()[0]
    return {
        "impl": f"flower {flwr.__version__} FedMedian",
        "rule": "median",
        "n": n,
        "d": dimension,
        "after_last_ms": after_last_ms,
        "heap_peak_mib": heap_peak / 2**20,
        "peak_mib": (_peak_kib() - baseline) / 1024,
        "peak_reset": reset,
        "checksum": float(np.asarray(result, dtype=np.float64).sum()),
    }


CASES = {
    "ours": case_ours,
    "flower": case_flower,
    "round": case_round,
    "median_ours": case_median_ours,
    "median_flower": case_median_flower,
}


def ensure_flower_venv() -> None:
    """Create var/flower-venv from bench/requirements-flower.txt when it is missing."""
    if FLOWER_PYTHON.exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(FLOWER_VENV)], check=True)
    subprocess.run(
        [
            str(FLOWER_PYTHON),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-r",
            str(ROOT / "bench" / "requirements-flower.txt"),
        ],
        check=True,
    )


def run_case(case: str, n: int, dimension: int, seed: int) -> dict[str, Any]:
    flower = case.endswith("flower")
    python = str(FLOWER_PYTHON) if flower else sys.executable
    command = [python, __file__, "--case", case, "--n", str(n), "--d", str(dimension)]
    command += ["--seed", str(seed)]
    env = dict(os.environ) if flower else {**os.environ, "PYTHONPATH": str(ROOT)}
    if flower:
        env.pop("PYTHONPATH", None)  # Flower's interpreter must not see the project's packages
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str | None:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 100k, n ∈ {20, 50}, 100 clients")
    parser.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--d", type=int, default=1_000_000, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.case:  # a child process: run one case, print its JSON
        print(json.dumps(CASES[args.case](args.n, args.d, args.seed)))
        return 0

    dimension = 100_000 if args.quick else 1_000_000
    sizes = [20, 50] if args.quick else [100, 500]
    round_clients = 100 if args.quick else 1000
    if any(case.endswith("flower") for case in args.only):
        ensure_flower_venv()
    results: list[dict[str, Any]] = []
    for n in sizes:
        for case in ("ours", "flower"):
            if case in args.only:
                results.append(run_case(case, n, dimension, args.seed))
    if "round" in args.only:
        results.append(run_case("round", round_clients, dimension, args.seed))
    median_clients = sizes[0]
    for case in ("median_ours", "median_flower"):
        if case in args.only:
            results.append(run_case(case, median_clients, dimension, args.seed))

    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end (other work shares the cores)\n"
    )
    print(
        "| n | d | implementation | after last arrival: wall (measured / typical), CPU "
        "| per update (median / p99) | peak memory |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        if r["impl"].startswith("ours (chunks)") or "rule" in r:
            continue
        print(
            f"| {r['n']} | {r['d']:,} | {r['impl']} | {r['after_last_ms']:.2f} / "
            f"{r['after_last_typical_ms']:.2f} ms, CPU {r['after_last_cpu_ms']:.2f} ms "
            f"| {r['fold_ms_median']:.2f} / {r['fold_ms_p99']:.2f} ms | {r['peak_mib']:.1f} MiB |"
        )
    ratios = []
    for n in sizes:
        pair = {
            r["impl"].split()[0]: r
            for r in results
            if r["n"] == n and "after_last_ms" in r and "rule" not in r
        }
        if {"ours", "flower"} <= pair.keys():
            ours, flower = pair["ours"], pair["flower"]
            ratios.append(
                {
                    "n": n,
                    "memory_ratio": flower["peak_mib"] / max(ours["peak_mib"], 1e-9),
                    "after_last_ratio": flower["after_last_ms"] / ours["after_last_typical_ms"],
                    "checksum_difference": abs(ours["checksum"] - flower["checksum"]),
                }
            )
    for ratio in ratios:
        print(
            f"\nn={ratio['n']}: Flower uses {ratio['memory_ratio']:.1f}× our memory and takes "
            f"{ratio['after_last_ratio']:.0f}× as long after the last arrival "
            f"(sums of the two aggregates differ by {ratio['checksum_difference']:.2e})"
        )
    for r in results:
        if r["impl"].startswith("ours (chunks)"):
            print(
                f"\nround of {r['n']} clients, d = {r['d']:,}: server CPU "
                f"{r['server_cpu_ms_per_update']:.2f} ms per update, checkpoint "
                f"{r['checkpoint_ms_median']:.1f} ms (median), finish {r['finish_ms']:.2f} ms (median), "
                f"peak memory {r['peak_mib']:.1f} MiB"
            )
    medians = [r for r in results if r.get("rule") == "median"]
    if medians:
        print(
            "\n| coordinate median, n | d | implementation | after last arrival | heap peak "
            "| RSS peak (with mapped spill pages) |"
        )
        print("|---|---|---|---|---|---|")
        for r in medians:
            print(
                f"| {r['n']} | {r['d']:,} | {r['impl']} | {r['after_last_ms'] / 1e3:.2f} s "
                f"| {r['heap_peak_mib']:.1f} MiB | {r['peak_mib']:.1f} MiB |"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"quick": args.quick, "cpu": cpu_model(), "cores": os.cpu_count()}
    report["load_average_after"] = os.getloadavg()
    report |= {"results": results, "ratios": ratios}
    (RESULTS / "aggregation.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
