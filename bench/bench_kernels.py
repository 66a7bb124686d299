#!/usr/bin/env python3
"""Benchmark the built-in WASM kernels in wasmtime and Node against native references.

Every workload is a list of tasks; each WASM host runs each task with one ccgsc_run call on
the same .wasm file, and the outputs must be byte-identical across WASM hosts. Native
references: the prime sieve's own C source compiled natively, numpy for Monte Carlo and the
parameter sweep. Prints a markdown table and writes bench/results/kernels.json.

Usage: python bench/bench_kernels.py [--quick]

Other WASM hosts (a browser, for instance) plug in with register_host(name, fn), where fn
takes (kernel_path, task_inputs) and returns (outputs, per-task seconds); see HostFn.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WASM_DIR = ROOT / "wasm"
BUILD_DIR = WASM_DIR / "build"
RESULTS = ROOT / "bench" / "results" / "kernels.json"
sys.path.insert(0, str(ROOT / "edge_worker"))

from ccgsc_worker import abi  # noqa: E402
from ccgsc_worker.kernel import KernelRunner  # noqa: E402

HostFn = Callable[[Path, list[bytes]], tuple[list[bytes], list[float]]]
"""A WASM host: (kernel .wasm path, task inputs) -> (task outputs, seconds per task)."""

GAMMA = 0x9E3779B97F4A7C15
SALT = 0x6A09E667F3BCC909
MASK = (1 << 64) - 1


@dataclass
class Workload:
    """One benchmark case: a kernel, its tasks and how to compute it natively."""

    name: str
    kernel: str
    units: int
    unit: str
    tasks: list[tuple[int, int, int, tuple[float, ...]]]
    native: Callable[[Workload], tuple[list[bytes], list[float]]]
    native_label: str
    exact_native: bool = True
    results: dict[str, Any] = field(default_factory=dict)

    def inputs(self) -> list[bytes]:
        """Encoded task inputs."""
        return [abi.encode_input(lo, hi, seed, p) for lo, hi, seed, p in self.tasks]


def split(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """Split [lo, hi) into contiguous near-equal parts."""
    edges = [lo + (hi - lo) * i // parts for i in range(parts + 1)]
    return list(zip(edges, edges[1:], strict=False))


# ---- WASM hosts ----


def time_host(
    run_task: Callable[[bytes], bytes], inputs: list[bytes]
) -> tuple[list[bytes], list[float]]:
    """Time a callable that runs one task (input bytes -> output bytes) over every input."""
    outputs, seconds = [], []
    for data in inputs:
        start = time.perf_counter()
        outputs.append(run_task(data))
        seconds.append(time.perf_counter() - start)
    return outputs, seconds


def wasmtime_host(kernel: Path, inputs: list[bytes]) -> tuple[list[bytes], list[float]]:
    """Run every task in wasmtime through the worker's KernelRunner."""
    import hashlib

    wasm = kernel.read_bytes()
    runner = KernelRunner(wasm, hashlib.sha256(wasm).hexdigest(), timeout=3600)
    return time_host(runner.run, inputs)


def node_host(kernel: Path, inputs: list[bytes]) -> tuple[list[bytes], list[float]]:
    """Run every task in Node (after one untimed warm-up task) via kernels_node.mjs."""
    request = json.dumps({"inputs": [d.hex() for d in inputs], "warmup": True})
    out = subprocess.run(
        ["node", str(ROOT / "bench" / "kernels_node.mjs"), str(kernel)],
        input=request,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    return [bytes.fromhex(h) for h in result["outputs"]], result["seconds"]


HOSTS: dict[str, HostFn] = {"wasmtime": wasmtime_host}
if shutil.which("node"):
    HOSTS["node"] = node_host


def register_host(name: str, fn: HostFn) -> None:
    """Add a WASM host (e.g. a headless browser) to the comparison."""
    HOSTS[name] = fn


# ---- native references ----


class NativePrimeCount:
    """The prime_count C source compiled natively with the host C compiler."""

    def __init__(self) -> None:
        """Compile the reference into a temporary directory."""
        self._tmp = tempfile.TemporaryDirectory(prefix="ccgsc-bench-")
        self.binary = Path(self._tmp.name) / "prime_count_native"
        cc = shutil.which("cc") or shutil.which("gcc")
        cmd_prefix = [cc] if cc else [sys.executable, "-m", "ziglang", "cc"]
        self.flags = ["-O3", "-march=native", "-ffp-contract=off", "-Wno-attributes"]
        subprocess.run(
            [
                *cmd_prefix,
                *self.flags,
                f"-I{WASM_DIR / 'src'}",
                f'-DKERNEL_SOURCE="{WASM_DIR / "src" / "prime_count.c"}"',
                "-o",
                str(self.binary),
                str(ROOT / "bench" / "native_kernel_driver.c"),
                "-lm",
            ],
            check=True,
        )
        self.label = f"C ({Path(cmd_prefix[-1]).name} {' '.join(self.flags[:2])})"

    def __call__(self, workload: Workload) -> tuple[list[bytes], list[float]]:
        """Run the workload's tasks natively."""
        out = subprocess.run(
            [str(self.binary), *(d.hex() for d in workload.inputs())],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout)
        return [bytes.fromhex(h) for h in result["outputs"]], result["seconds"]


def numpy_montecarlo(workload: Workload) -> tuple[list[bytes], list[float]]:
    """The Monte Carlo sampling rule vectorised with numpy uint64 arithmetic."""
    outputs, seconds = [], []
    chunk = 1 << 22
    with np.errstate(over="ignore"):
        for lo, hi, seed, _ in workload.tasks:
            start = time.perf_counter()
            z0 = (SALT ^ seed) & MASK
            z0 = ((z0 ^ (z0 >> 30)) * 0xBF58476D1CE4E5B9) & MASK
            z0 = ((z0 ^ (z0 >> 27)) * 0x94D049BB133111EB) & MASK
            key = np.uint64(z0 ^ (z0 >> 31))
            inside = 0
            for a in range(lo, hi, chunk):
                idx = np.arange(a, min(a + chunk, hi), dtype=np.uint64)
                z = key + idx * np.uint64(GAMMA)
                z ^= z >> np.uint64(30)
                z *= np.uint64(0xBF58476D1CE4E5B9)
                z ^= z >> np.uint64(27)
                z *= np.uint64(0x94D049BB133111EB)
                z ^= z >> np.uint64(31)
                x, y = z >> np.uint64(33), z & np.uint64(0x7FFFFFFF)
                inside += int(np.count_nonzero(x * x + y * y < np.uint64(1 << 62)))
            seconds.append(time.perf_counter() - start)
            outputs.append(
                abi.reduce_outputs("sum_u64", [np.array([inside, hi - lo], "<u8").tobytes()])
            )
    return outputs, seconds


def numpy_sweep(workload: Workload) -> tuple[list[bytes], list[float]]:
    """The parameter sweep evaluated with numpy (numpy's cos for Rastrigin), best k kept."""
    outputs, seconds = [], []
    chunk = 1 << 20
    for lo, hi, _, params in workload.tasks:
        fid, x0, x1, nx, y0, y1, ny, k = params
        nx, ny, k = int(nx), int(ny), int(k)
        start = time.perf_counter()
        runs = []
        for a in range(lo, hi, chunk):
            i = np.arange(a, min(a + chunk, hi), dtype=np.int64)
            x = x0 + ((x1 - x0) * (i % nx)) / (nx - 1)
            y = y0 + ((y1 - y0) * (i // nx)) / (ny - 1)
            if fid == 0:
                v = (1.0 - x) ** 2 + 100.0 * (y - x * x) ** 2
            elif fid == 1:
                v = (x * x + y - 11.0) ** 2 + (x + y * y - 7.0) ** 2
            else:
                v = (20.0 + (x * x - 10.0 * np.cos(2 * np.pi * x))) + (
                    y * y - 10.0 * np.cos(2 * np.pi * y)
                )
            part = np.argpartition(v, min(k, len(v) - 1))[:k]
            order = part[np.lexsort((i[part], v[part]))]
            runs.append(abi.encode_records([(int(i[j]), float(v[j])) for j in order]))
        outputs.append(abi.reduce_outputs("best_k", runs, k=k))
        seconds.append(time.perf_counter() - start)
    return outputs, seconds


# ---- workloads ----


def workloads(quick: bool) -> list[Workload]:
    """The benchmark cases; --quick shrinks every range."""
    native_pc = NativePrimeCount()
    scale = 1 if quick else 5
    sieve_hi = 2 * 10**8 * scale
    mr_lo, mr_n = 1 << 50, 10**6 * scale
    mc_n = 5 * 10**7 * scale
    side = 2000 if quick else 4000
    sweep_params = (2.0, -5.12, 5.12, float(side), -5.12, 5.12, float(side), 16.0)
    return [
        Workload(
            "prime_count sieve",
            "prime_count",
            sieve_hi,
            "integers",
            [(a, b, 0, ()) for a, b in split(0, sieve_hi, 4 * scale)],
            native_pc,
            native_pc.label,
        ),
        Workload(
            "prime_count Miller-Rabin (2^50)",
            "prime_count",
            mr_n,
            "integers",
            [(a, b, 0, ()) for a, b in split(mr_lo, mr_lo + mr_n, 2 * scale)],
            native_pc,
            native_pc.label,
        ),
        Workload(
            "montecarlo_pi",
            "montecarlo_pi",
            mc_n,
            "samples",
            [(a, b, 42, ()) for a, b in split(0, mc_n, 5 * scale)],
            numpy_montecarlo,
            "numpy",
        ),
        Workload(
            "param_sweep Rastrigin k=16",
            "param_sweep",
            side * side,
            "grid points",
            [(a, b, 0, sweep_params) for a, b in split(0, side * side, 4 * scale)],
            numpy_sweep,
            "numpy",
            exact_native=False,
        ),
    ]


def run_workload(w: Workload) -> None:
    """Time one workload on every host and the native reference; record the results."""
    inputs = w.inputs()
    kernel = BUILD_DIR / f"{w.kernel}.wasm"
    reference: list[bytes] | None = None
    for name, host in HOSTS.items():
        outputs, seconds = host(kernel, inputs)
        total = sum(seconds)
        w.results[name] = {"seconds": total, "per_second": w.units / total}
        if reference is None:
            reference = outputs
        w.results[name]["identical"] = outputs == reference
    outputs, seconds = w.native(w)
    total = sum(seconds)
    w.results["native"] = {"label": w.native_label, "seconds": total, "per_second": w.units / total}
    if w.exact_native:
        w.results["native"]["matches"] = outputs == reference
    else:
        w.results["native"]["matches"] = _close_records(w, outputs, reference or [])


def _close_records(w: Workload, native: list[bytes], wasm: list[bytes]) -> bool:
    """best_k agreement up to last-bit differences of numpy's cosine."""
    for a, b in zip(native, wasm, strict=True):
        ra, rb = abi.decode_output("best_k", a), abi.decode_output("best_k", b)
        if len(ra) != len(rb):
            return False
        if any(
            not math.isclose(x[1], y[1], rel_tol=1e-9, abs_tol=1e-9)
            for x, y in zip(ra, rb, strict=True)
        ):
            return False
    return True


def fmt_rate(v: float) -> str:
    """Human-readable rate."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.1f} {suffix}"
    return f"{v:.1f}"


def table(ws: list[Workload]) -> str:
    """Markdown table of throughput and ratios to native."""
    hosts = list(HOSTS)
    head = (
        ["workload", "units", "native"]
        + [f"{h} /s" for h in hosts]
        + [f"{h}/native" for h in hosts]
    )
    head += ["WASM identical", "native matches"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in ws:
        nat = w.results["native"]["per_second"]
        row = [w.name, f"{w.units:,} {w.unit}", f"{fmt_rate(nat)}/s ({w.native_label})"]
        row += [f"{fmt_rate(w.results[h]['per_second'])}" for h in hosts]
        row += [f"{w.results[h]['per_second'] / nat:.2f}" for h in hosts]
        row.append("yes" if all(w.results[h]["identical"] for h in hosts) else "NO")
        match = w.results["native"]["matches"]
        row.append(("yes" if match else "NO") + ("" if w.exact_native else " (to 1e-9)"))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def node_version() -> str | None:
    """The Node version, if Node is installed."""
    if "node" not in HOSTS:
        return None
    return subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Build the kernels, run every workload and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller ranges (a few seconds)")
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, str(WASM_DIR / "build.py"), "--quiet"], check=True)
    ws = workloads(args.quick)
    for w in ws:
        print(f"running {w.name} ...", file=sys.stderr)
        run_workload(w)
    print(table(ws))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((BUILD_DIR / "manifest.json").read_text())
    report = {
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "node": node_version(),
        },
        "compiler": manifest["compiler"],
        "kernels": {k["name"]: k["sha256"] for k in manifest["kernels"]},
        "workloads": [
            {
                "name": w.name,
                "kernel": w.kernel,
                "units": w.units,
                "unit": w.unit,
                "tasks": len(w.tasks),
                "results": w.results,
            }
            for w in ws
        ],
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    ok = all(w.results[h]["identical"] for w in ws for h in HOSTS)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
