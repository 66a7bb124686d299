#!/usr/bin/env python3
"""What a client pays to draw its distributed-DP share (docs/benchmarks.md).

One Skellam share of d coordinates, as a client of a secure round draws it: the variance the
round's sizing gives (n = 100 invited, m = 90 honest survivors, z = 1, C = 1: about 4.4·10¹²
per coordinate in encoded units), every byte from the CSPRNG (os.urandom in Python,
crypto.getRandomValues in Node and Chromium). Times the sampler alone and, in Python, the whole
client step it sits in (encode, draw, add in Z_2^32; the masks are bench_secagg.py's). Median of
``--repeats`` draws for d = 100k and 1M.

Usage: python bench/bench_dp_shares.py [--repeats 5] [--no-browser]
Writes bench/results/dp_shares.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "edge_worker"), str(ROOT)]

from ccgsc_worker.dp import add_share, noise_share  # noqa: E402
from ccgsc_worker.secagg.encoding import encode  # noqa: E402
from jobs.privacy import per_client_variance  # noqa: E402
from jobs.privacy.skellam import distributed_scale  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dp_shares.json"
DIMENSIONS = (100_000, 1_000_000)
N, M, Z, CLIP = 100, 90, 1.0, 1.0
SCALE = distributed_scale(n_clients=N, clip_norm=CLIP, noise_multiplier=Z, noise_shares=M)
VARIANCE = per_client_variance(noise_multiplier=Z, clip_norm=CLIP, scale=SCALE, min_survivors=M)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"]
JS_TIMER = """
async (request) => {
  const { skellamShare } = await import(request.module);
  const times = [];
  for (let r = 0; r < request.repeats; r++) {
    const start = performance.now();
    skellamShare(request.dimension, request.variance);
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}
"""


def _median_ms(action, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def python_row(dimension: int, repeats: int) -> dict:
    update = np.random.default_rng(0).normal(0, 0.01, dimension).astype(np.float32)

    def draw() -> None:
        noise_share(dimension, mechanism="skellam", variance=VARIANCE, random_bytes=os.urandom)

    def client_step() -> None:
        encoded = encode(update, scale=SCALE, bound=CLIP, random_bytes=os.urandom)
        add_share(encoded, noise_share(dimension, mechanism="skellam", variance=VARIANCE))

    return {
        "draw_ms": _median_ms(draw, repeats),
        "encode_draw_add_ms": _median_ms(client_step, repeats),
    }


def node_ms(dimension: int, repeats: int) -> float | None:
    node = shutil.which("node")
    if node is None:
        return None
    module = (ROOT / "static/worker_frontend/dp-noise.js").as_uri()
    request = {"module": module, "dimension": dimension, "variance": VARIANCE, "repeats": repeats}
    script = f"const run = {JS_TIMER};\nrun({json.dumps(request)}).then(console.log);"
    out = subprocess.run(  # noqa: S603 - node and our own script
        [node, "--input-type=module", "-e", script], capture_output=True, text=True, check=False
    )
    return float(out.stdout) if out.returncode == 0 else None


def chromium_ms(repeats: int) -> tuple[dict[int, float], str] | None:
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if executable is None:
        return None
    from playwright.sync_api import sync_playwright

    from tests.static_site import StaticSite

    site = StaticSite(
        "<!doctype html><title>dp shares</title>",
        {"/static/worker_frontend/": ROOT / "static" / "worker_frontend"},
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        page.goto(site.url)
        times = {
            d: page.evaluate(
                JS_TIMER,
                {
                    "module": "/static/worker_frontend/dp-noise.js",
                    "dimension": d,
                    "variance": VARIANCE,
                    "repeats": repeats,
                },
            )
            for d in DIMENSIONS
        }
        version = browser.version
        browser.close()
    site.close()
    return times, version


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true", help="Python and Node only")
    args = parser.parse_args()
    chromium = None if args.no_browser else chromium_ms(args.repeats)
    rows = []
    for dimension in DIMENSIONS:
        row = {"dimension": dimension, **python_row(dimension, args.repeats)}
        row["node_ms"] = node_ms(dimension, args.repeats)
        row["chromium_ms"] = chromium[0][dimension] if chromium else None
        rows.append(row)
        print(row, file=sys.stderr)
    report = {
        "variance": VARIANCE,
        "scale": SCALE,
        "repeats": args.repeats,
        "chromium": chromium[1] if chromium else None,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"Skellam share, variance {VARIANCE:.3g} per coordinate (n = {N}, m = {M}, z = {Z})")
    print("| d | Python draw | Python encode + draw + add | Node draw | Chromium draw |")
    print("|---|---|---|---|---|")

    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:.0f} ms"

    for row in rows:
        print(
            f"| {row['dimension']:,} | {ms(row['draw_ms'])} | {ms(row['encode_draw_add_ms'])} | "
            f"{ms(row['node_ms'])} | {ms(row['chromium_ms'])} |"
        )


if __name__ == "__main__":
    main()
