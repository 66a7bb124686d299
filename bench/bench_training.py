#!/usr/bin/env python3
"""Training speed of the 2NN (784-200-200-10 ReLU, McMahan et al. 2017): samples per second
of one local epoch at B=10 and B=64.

Hosts: our mlp kernel in wasmtime (the edge worker's KernelRunner), in Node and in headless
Chromium (both through the worker page's runtime, static/worker_frontend/kernel-runtime.js);
the numpy reference of the same algorithm (tests/kernels/train_reference.py: same shuffle,
same minibatches, float32), with numpy's default BLAS threads and with one thread; and
TensorFlow.js 4.22 with its WASM backend in Node (bench/training_tfjs.mjs, `npm ci` first).

Every figure is the best of the repeats, in wall-clock time and, where the host allows it, in
CPU time of the process (all its threads; for Chromium, the renderer process's CPU time from
the DevTools protocol, averaged over the repeats because it ticks coarsely). The machine is
shared, so the ratios use CPU time. The three hosts of our kernel must return
byte-identical outputs; the script fails if they do not.

Usage: python bench/bench_training.py [--quick] [--no-chromium]
Writes bench/results/training.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "edge_worker"), str(ROOT)]

from ccgsc_worker import abi  # noqa: E402
from ccgsc_worker.kernel import KernelRunner  # noqa: E402
from tests.kernels import train_reference as ref  # noqa: E402
from tests.static_site import StaticSite  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "training.json"
BUILD = ROOT / "wasm" / "build"
TWO_NN = [784, 200, 200, 10]
BATCH_SIZES = (10, 64)
LEARNING_RATE = 0.01
NODE = shutil.which("node")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def mlp_entry() -> dict[str, Any]:
    """The mlp kernel's build manifest entry (builds the kernels if needed)."""
    subprocess.run([sys.executable, str(ROOT / "wasm" / "build.py"), "--quiet"], check=True)
    manifest = json.loads((BUILD / "manifest.json").read_text())
    return next(k for k in manifest["training_kernels"] if k["name"] == "mlp")


def dataset(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-shaped u8 images, labels and initial 2NN weights (content does not change speed)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 784), dtype=np.uint8)
    return x, rng.integers(0, 10, n), ref.init_dense(TWO_NN, 0)


def timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each repeat (after one warm-up call)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def bench_wasmtime(entry: dict[str, Any], inputs: dict[int, bytes], repeats: int) -> dict:
    """Our kernel in wasmtime, one call per epoch, one reused instance."""
    runner = KernelRunner(
        (BUILD / entry["file"]).read_bytes(),
        entry["sha256"],
        limits=abi.limits_for("train", entry["limits"]),
        timeout=3600,
    )
    out = {}
    for batch, data in inputs.items():
        wall, cpu = timed(lambda data=data: runner.run(data), repeats)
        digest = hashlib.sha256(runner.run(data)).hexdigest()
        out[batch] = {"seconds": wall, "cpu_seconds": cpu, "sha256": digest}
    return out


def _limits_js(entry: dict[str, Any]) -> dict[str, int]:
    limits = entry["limits"]
    return {
        "inputBytes": limits["input_bytes"],
        "outputBytes": limits["output_bytes"],
        "memoryBytes": limits["memory_bytes"],
    }


def bench_node(entry: dict[str, Any], paths: dict[int, Path], repeats: int) -> dict:
    """Our kernel in Node through kernel-runtime.js (fresh instance per call)."""
    request = {
        "wasm": str(BUILD / entry["file"]),
        "limits": _limits_js(entry),
        "runs": [{"input": str(paths[b]), "repeats": repeats} for b in paths],
    }
    proc = subprocess.run(
        [NODE, str(ROOT / "bench" / "training_node.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    )
    report = json.loads(proc.stdout)
    return dict(zip(paths, report["runs"], strict=True)) | {"engine": report["engine"]}


PAGE = b"""<!doctype html><meta charset="utf-8"><title>training bench</title>
<script type="module">
import { compileKernel, runKernel } from "/rt/kernel-runtime.js";
import { sha256Hex } from "/rt/protocol.js";
let module, input, limits;
window.benchLoad = async (kernelUrl, kernelLimits, inputUrl) => {
  module = await compileKernel(new Uint8Array(await (await fetch(kernelUrl)).arrayBuffer()));
  input = new Uint8Array(await (await fetch(inputUrl)).arrayBuffer());
  limits = kernelLimits;
  return { sha256: await sha256Hex(runKernel(module, input, limits)), agent: navigator.userAgent };
};
window.benchOnce = () => {
  const t0 = performance.now();
  runKernel(module, input, limits);
  return (performance.now() - t0) / 1000;
};
window.ready = true;
</script>"""


def bench_chromium(entry: dict[str, Any], paths: dict[int, Path], repeats: int) -> dict:
    """Our kernel in headless Chromium through kernel-runtime.js, served on loopback."""
    from playwright.sync_api import sync_playwright

    from tests.e2e.conftest import CHROMIUM_ARGS

    directory = next(iter(paths.values())).parent
    site = StaticSite(
        PAGE,
        {"/rt/": ROOT / "static" / "worker_frontend", "/k/": BUILD, "/in/": directory},
    )
    out: dict[Any, Any] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page()
            page.goto(site.url)
            page.wait_for_function("window.ready === true")
            # CPU time of the renderer process from the DevTools protocol's ProcessTime.
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")

            def process_time() -> float:
                metrics = cdp.send("Performance.getMetrics")["metrics"]
                return next(m["value"] for m in metrics if m["name"] == "ProcessTime")

            for batch, path in paths.items():
                loaded = page.evaluate(
                    "([k, l, i]) => window.benchLoad(k, l, i)",
                    [f"/k/{entry['file']}", _limits_js(entry), f"/in/{path.name}"],
                )
                # ProcessTime ticks coarsely (about 10 ms): take the mean over all repeats.
                before = process_time()
                wall = [page.evaluate("() => window.benchOnce()") for _ in range(repeats)]
                cpu = [(process_time() - before) / repeats]
                out[batch] = {"seconds": wall, "cpu_seconds": cpu, "sha256": loaded["sha256"]}
            out["engine"] = f"chromium {browser.version}"
            browser.close()
    finally:
        site.close()
    return out


def bench_numpy(x: np.ndarray, y: np.ndarray, w: np.ndarray, repeats: int, threads: int | None):
    """The numpy reference of the same algorithm; threads=1 limits BLAS to one thread."""
    from threadpoolctl import threadpool_limits

    xf = (x / np.float32(255)).astype(np.float32)

    def batch_fn(weights, xb, yb, grad):
        return ref.dense_batch(weights, TWO_NN, xb, yb, grad)

    out = {}
    limit = threadpool_limits(threads) if threads else contextlib.nullcontext()
    with limit:
        for batch in BATCH_SIZES:
            wall, cpu = timed(
                lambda b=batch: ref.run_reference(
                    op="train", batch_fn=batch_fn, weights=w, x=xf, y=y, batch_size=b,
                    seed=1, learning_rate=LEARNING_RATE,
                ),
                repeats,
            )  # fmt: skip
            out[batch] = {"seconds": wall, "cpu_seconds": cpu}
    return out


def bench_tfjs(n: int, repeats: int) -> dict:
    """TensorFlow.js with the WASM backend in Node, the same 2NN and plain SGD."""
    request = {
        "n": n,
        "batch_sizes": list(BATCH_SIZES),
        "repeats": repeats,
        "learning_rate": LEARNING_RATE,
    }
    proc = subprocess.run(
        [NODE, str(ROOT / "bench" / "training_tfjs.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
        cwd=ROOT,
    )
    report = json.loads(proc.stdout)
    out: dict[Any, Any] = {
        r["batch_size"]: {"seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"]}
        for r in report["results"]
    }
    out["engine"] = f"tfjs {report['tfjs']} {report['backend']} (simd {report['simd']}, "
    out["engine"] += f"threads {report['threads']}) on {report['engine']}"
    return out


def _rate(n: int, seconds: list[float] | None) -> float | None:
    return n / min(seconds) if seconds else None


def main(argv: list[str] | None = None) -> int:
    """Run every host, check bit-identity, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    parser.add_argument("--no-chromium", action="store_true", help="skip the browser")
    args = parser.parse_args(argv)
    n, repeats = (500, 2) if args.quick else (2000, 5)
    entry = mlp_entry()
    x, y, w = dataset(n)
    inputs = {
        b: abi.encode_train_input(
            op="train", sizes=TWO_NN, weights=w, x=x, y=y, batch_size=b, seed=1,
            learning_rate=LEARNING_RATE,
        )
        for b in BATCH_SIZES
    }  # fmt: skip
    hosts: dict[str, dict] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ccgsc-train-bench-") as tmp:
        paths = {}
        for batch, data in inputs.items():
            paths[batch] = Path(tmp) / f"2nn-b{batch}.bin"
            paths[batch].write_bytes(data)
        plan = [("wasmtime", lambda: bench_wasmtime(entry, inputs, repeats))]
        if NODE:
            plan.append(("node", lambda: bench_node(entry, paths, repeats)))
        if not args.no_chromium and Path(CHROMIUM).exists():
            plan.append(("chromium", lambda: bench_chromium(entry, paths, repeats)))
        plan.append(("numpy", lambda: bench_numpy(x, y, w, repeats, None)))
        plan.append(("numpy 1 thread", lambda: bench_numpy(x, y, w, repeats, 1)))
        if NODE and (ROOT / "node_modules" / "@tensorflow" / "tfjs-backend-wasm").exists():
            plan.append(("tfjs-wasm", lambda: bench_tfjs(n, repeats)))
        else:
            errors["tfjs-wasm"] = "node_modules missing: run `npm ci`"
        for name, run in plan:
            try:
                hosts[name] = run()
            except Exception as exc:  # reported in the table, the other hosts still run
                errors[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
    digests = {
        (name, b): hosts[name][b]["sha256"]
        for name in ("wasmtime", "node", "chromium")
        if name in hosts
        for b in BATCH_SIZES
    }
    identical = all(
        len({d for (_, b), d in digests.items() if b == batch}) == 1 for batch in BATCH_SIZES
    )

    def rates(host: str, batch: int) -> tuple[float | None, float | None]:
        timing = hosts.get(host, {}).get(batch, {})
        return _rate(n, timing.get("seconds")), _rate(n, timing.get("cpu_seconds"))

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    rows = []
    for name in hosts:
        for batch in BATCH_SIZES:
            wall, cpu = rates(name, batch)
            # Ratios from CPU time where both sides have it (the machine is shared, so wall
            # time mostly measures the neighbours); Chromium only has wall time.
            mine = cpu if cpu else wall
            pick = 1 if cpu else 0
            rows.append(
                {
                    "host": name,
                    "engine": hosts[name].get("engine", ""),
                    "batch_size": batch,
                    "samples_per_second": wall,
                    "cpu_samples_per_second": cpu,
                    "ratio_basis": "cpu" if cpu else "wall",
                    "vs_numpy": ratio(mine, rates("numpy", batch)[pick]),
                    "vs_numpy_1_thread": ratio(mine, rates("numpy 1 thread", batch)[pick]),
                    "vs_tfjs_wasm": ratio(mine, rates("tfjs-wasm", batch)[pick]),
                }
            )
    report = {
        "samples": n,
        "repeats": repeats,
        "learning_rate": LEARNING_RATE,
        "model": "2NN 784-200-200-10 ReLU, softmax cross-entropy, plain SGD, one epoch",
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "identical_outputs": identical,
        "digests": {f"{h} B={b}": d for (h, b), d in digests.items()},
        "rows": rows,
        "errors": errors,
        "raw": {k: {str(b): v for b, v in r.items()} for k, r in hosts.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    print(f"2NN training, {n} samples per epoch, best of {repeats}; load {os.getloadavg()[0]:.1f}")
    print()
    print(
        "| host | B | samples/s (wall) | samples/s (CPU) | × numpy | × numpy 1 thread | × tfjs-wasm |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        basis = " (wall)" if row["ratio_basis"] == "wall" else ""
        print(
            f"| {row['host']} | {row['batch_size']} | {fmt(row['samples_per_second'], ',.0f')} "
            f"| {fmt(row['cpu_samples_per_second'], ',.0f')} "
            f"| {fmt(row['vs_numpy'], '.2f')}{basis} "
            f"| {fmt(row['vs_numpy_1_thread'], '.2f')}{basis} "
            f"| {fmt(row['vs_tfjs_wasm'], '.1f')}{basis} |"
        )
    print()
    print(f"byte-identical outputs across our hosts: {identical}")
    for name, error in errors.items():
        print(f"{name}: not measured ({error})")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
