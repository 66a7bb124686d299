#!/usr/bin/env python3
"""Run every benchmark and report: kernels (wasmtime, Node, Chromium, native), training speed
(2NN: our kernel vs numpy and TensorFlow.js-wasm), validation quality, dispatch throughput and
latency, the push floor (no database), FL aggregation and secure aggregation against Flower,
the FedAvg paper's table (FedSGD vs FedAvg rounds, sync vs buffered-async), DP rounds,
compressed uploads, a worker page's analytics contribution.

Each benchmark runs as its own process (each sets Django up with its own database) and prints
a markdown table; this script prints the machine first, then the tables, and writes
bench/results/run_all.json with the machine and every benchmark's JSON.

Usage: python bench/run_all.py [--quick]
       [--only kernels training validation ledger dispatch claim_flush result_rows protocol_check
               push_floor sockets aggregation secagg secagg_wire fedavg_paper analytics_page
               dp_rounds compression dp_shares]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

BENCHMARKS: dict[str, tuple[str, list[str], list[str], str]] = {
    # name: (script, its args, its args with --quick (each script's own short form), JSON written)
    "kernels": ("bench_kernels_chromium.py", [], ["--quick"], "kernels.json"),
    "training": ("bench_training.py", [], ["--quick"], "training.json"),
    "validation": ("bench_validation.py", [], ["--quick"], "validation.json"),
    "ledger": ("bench_ledger.py", [], ["--quick"], "ledger.json"),
    "dispatch": (
        "bench_dispatch.py",
        ["--profile", "--conn-max-age", "600"],
        ["--quick", "--profile"],
        "dispatch.json",
    ),
    # One protocol message checked: our compiled checker against jsonschema and jsonschema-rs.
    "protocol_check": ("bench_protocol_check.py", [], ["--quick"], "protocol_check.json"),
    # The Python edge worker's CPU per replica through its session and driver, no network.
    "edge_cycle": ("bench_edge_cycle.py", [], ["--quick"], "edge_cycle.json"),
    # One 256-claim flush alone, its array parameters bound by PostgreSQL or quoted by Django.
    "claim_flush": ("bench_claim_flush.py", [], ["--quick"], "claim_flush.json"),
    # A results flush's two reads of assignments, as rows and as model instances.
    "result_rows": ("bench_result_rows.py", [], ["--quick"], "result_rows.json"),
    # The push floor: N sockets, one frame each per channel-layer trigger, no database.
    "push_floor": ("bench_push_floor.py", [], ["--quick"], "push_floor.json"),
    # 10,000 worker sockets on several Daphnes, one Daphne killed under them (--quick: 300).
    "sockets": ("bench_sockets.py", [], ["--sockets", "300", "--clients", "2"], "sockets.json"),
    # Both create var/flower-venv from their pinned requirements when missing.
    "aggregation": ("bench_aggregation.py", [], ["--quick"], "aggregation.json"),
    "secagg": ("bench_secagg.py", [], ["--quick"], "secagg.json"),
    # One secure round through the services (PostgreSQL) against the pure path.
    "secagg_wire": ("bench_secagg_wire.py", [], [], "secagg_wire.json"),
    # McMahan et al. 2017's table on the offline MNIST digits, and sync vs buffered-async.
    "fedavg_paper": ("bench_fedavg_paper.py", [], ["--quick"], "fedavg_paper.json"),
    # A worker page's analytics contribution in Chromium: read the CSV, summarise, mask.
    "analytics_page": ("bench_analytics_page.py", [], ["--quick"], "analytics_page.json"),
    # DP-FedAvg as the rounds run it: accuracy on digits against ε at q = 1.
    "dp_rounds": ("bench_dp_rounds.py", [], ["--rounds", "10", "--seeds", "1"], "dp_rounds.json"),
    # Compressed uploads: bytes per scheme at the 2NN's d, accuracy on digits per scheme.
    "compression": (
        "bench_compression.py",
        [],
        ["--rounds", "10", "--seeds", "1"],
        "compression.json",
    ),
    # What a client pays to draw its distributed-DP (Skellam) share: Python, Node, Chromium.
    "dp_shares": ("bench_dp_shares.py", [], ["--repeats", "3", "--no-browser"], "dp_shares.json"),
}


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return (
        (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else None
    )


def machine() -> dict[str, Any]:
    """CPU, cores, memory and the versions of everything the benchmarks touch."""
    cpu = None
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = None
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:  # reported, not fatal: the dispatch benchmark will say more
        info["postgresql"] = f"unavailable ({type(exc).__name__})"
    try:
        import redis

        info["redis"] = redis.Redis(host="127.0.0.1", port=6379).info("server")["redis_version"]
    except Exception as exc:
        info["redis"] = f"unavailable ({type(exc).__name__})"
    chromium = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    info["chromium"] = _run([chromium, "--version"]) if chromium else None
    info["node"] = _run(["node", "--version"]) if shutil.which("node") else None
    return info


def machine_table(info: dict[str, Any]) -> str:
    lines = ["| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    return "\n".join(lines)


def bench_command(name: str, *, quick: bool) -> list[str]:
    """The command that runs one benchmark: only the flags its entry names (``--quick`` where
    the script has it)."""
    script, extra, quick_extra, _ = BENCHMARKS[name]
    return [sys.executable, str(ROOT / "bench" / script), *(quick_extra if quick else extra)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs of everything")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    info = machine()
    print("## Machine\n")
    print(machine_table(info))
    report: dict[str, Any] = {"quick": args.quick, "machine": info, "benchmarks": {}}
    status = 0
    for name in args.only:
        json_name = BENCHMARKS[name][3]
        cmd = bench_command(name, quick=args.quick)
        print(f"\n## {name}\n", flush=True)
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
        print(proc.stdout, flush=True)
        seconds = round(time.monotonic() - start, 1)
        entry: dict[str, Any] = {"command": cmd[1:], "exit": proc.returncode, "seconds": seconds}
        path = RESULTS / json_name
        if path.exists():
            entry["results"] = json.loads(path.read_text())
        report["benchmarks"][name] = entry
        status = status or proc.returncode
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "run_all.json").write_text(json.dumps(report, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
