#!/usr/bin/env python3
"""What a worker page spends on its analytics contribution, in headless Chromium.

The page's own modules (served from static/worker_frontend on 127.0.0.1, a secure context for
WebCrypto) do what an analytics round does on the page, timed with ``performance.now()``:

- **read**: ``parseColumnsCsv`` turns the picked CSV text into f32 rows of the query's columns
  (done once, when the contributor picks the file; a round reads the kept rows from IndexedDB);
- **summarise**: ``encodeAnalyticsInput`` and the analytics kernel (``runKernel``, a fresh
  instance, as the round's Web Worker runs it; here on the page's thread);
- **mask**: the secure round's ``maskUpdate`` (fixed-point encoding at the query's power-of-two
  scale, the self mask and one AES-CTR mask per neighbour), for client 1 of a cohort whose key
  phases ran untimed in the same page, with the neighbour count the server uses for that cohort.

The CSV has 8 columns of random numbers (about 19 bytes a cell); the query asks for 4 of them
with ``bins`` bins each. Each case runs ``--repeats`` times after one untimed warm-up; the
median is reported. The rows summarised equal the rows read (``max_rows`` is the file's).

Usage: python bench/bench_analytics_page.py [--quick] [--repeats N]
Writes bench/results/analytics_page.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "analytics_page.json"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "edge_worker"))

from jobs.analytics import Column, QuerySpec  # noqa: E402
from jobs.analytics.secure import secure_encoding  # noqa: E402
from jobs.secagg.graph import neighbour_count  # noqa: E402
from tests.e2e.conftest import CHROMIUM_ARGS  # noqa: E402
from tests.static_site import StaticSite  # noqa: E402

PAGE = """<!doctype html><meta charset="utf-8"><title>analytics page bench</title>
<script type="module">
import { parseColumnsCsv } from "/rt/local-columns.js";
import { encodeAnalyticsInput, decodeAnalyticsOutput } from "/rt/analytics-round.js";
import { compileVerified, runKernel } from "/rt/kernel-runtime.js";
import { SecureRoundClient } from "/rt/secagg-round.js";
import { neighbours } from "/rt/secagg-graph.js";

const b64 = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");

/** A cohort of n secure-round clients with their key phases done; client 1 is ready to mask. */
async function cohort(n, k, threshold, scale, bound, dimension) {
  const session = crypto.getRandomValues(new Uint8Array(32));
  const graphSeed = crypto.getRandomValues(new Uint8Array(32));
  const ids = Array.from({ length: n }, (_, i) => i + 1);
  const block = (client) => ({ client, clients: n, threshold, session: b64(session), graph_seed: b64(graphSeed), scale, bound });
  const clients = ids.map((id) => new SecureRoundClient({ job: "bench", round: 1, participation: id, analytics: { dimension }, secagg: block(id) }));
  const adverts = await Promise.all(clients.map((c) => c.advertise()));
  const graph = await neighbours(ids, graphSeed, k);
  const inbox = new Map(ids.map((id) => [id, []]));
  for (const id of ids) {
    const keys = [...graph.get(id)].map((j) => ({ client: j, cipher_public: adverts[j - 1].cipher_public, mask_public: adverts[j - 1].mask_public }));
    const shared = await clients[id - 1].handle({ type: "secagg_keys", participation: id, keys });
    for (const { client, ciphertext } of shared.ciphertexts) inbox.get(client).push({ client: id, ciphertext });
  }
  await clients[0].handle({ type: "secagg_ciphertexts", participation: 1, ciphertexts: inbox.get(1) });
  return { client: clients[0], neighbours: graph.get(1).size };
}

window.benchCase = async ({ csv, names, columns, wasmUrl, sha256, n, k, threshold, scale, bound, repeats }) => {
  const bytes = new Uint8Array(await (await fetch(wasmUrl, { cache: "no-store" })).arrayBuffer());
  const module = await compileVerified(bytes, sha256);
  const schema = { format: "columns", columns: names };
  const times = { read: [], summarise: [], mask: [] };
  let summary = null, parsed = null, neighbourCount = 0;
  for (let r = 0; r <= repeats; r++) {
    let t = performance.now();
    parsed = parseColumnsCsv(csv, schema, { maxRows: 1 << 24 });
    const read = performance.now() - t;
    t = performance.now();
    const input = encodeAnalyticsInput(columns, parsed.x, { rows: parsed.n, features: parsed.features, maxRows: parsed.n });
    summary = decodeAnalyticsOutput(runKernel(module, input), columns);
    const summarise = performance.now() - t;
    const made = await cohort(n, k, threshold, scale, bound, summary.dimension);
    neighbourCount = made.neighbours;
    const vector = new Float32Array(summary.body.slice(32).buffer);
    t = performance.now();
    await made.client.maskUpdate(vector);
    const mask = performance.now() - t;
    if (r > 0) { times.read.push(read); times.summarise.push(summarise); times.mask.push(mask); }
  }
  return { times, rows: parsed.n, dimension: summary.dimension, status: summary.status, neighbours: neighbourCount, agent: navigator.userAgent };
};
window.benchReady = true;
</script>"""

COLUMN_NAMES = [f"c{i}" for i in range(8)]
ASKED = ["c1", "c3", "c4", "c6"]


def _csv(rows: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    values = rng.normal(50.0, 20.0, (rows, len(COLUMN_NAMES)))
    lines = [",".join(COLUMN_NAMES)]
    lines += [",".join(f"{v:.12g}" for v in row) for row in values]
    return "\n".join(lines) + "\n"


def run(cases: list[tuple[int, int]], *, cohort: int, repeats: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if executable is None:
        raise SystemExit("no chromium on PATH (set CHROMIUM to its path)")
    wasm = ROOT / "wasm" / "build" / "analytics.wasm"
    sha256 = hashlib.sha256(wasm.read_bytes()).hexdigest()
    site = StaticSite(PAGE, {"/rt/": ROOT / "static" / "worker_frontend", "/k/": wasm.parent})
    results: list[dict[str, Any]] = []
    load = [os.getloadavg()]
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page()
            page.goto(site.url)
            page.wait_for_function("window.benchReady === true")
            for rows, bins in cases:
                csv = _csv(rows, seed=rows + bins)
                spec = QuerySpec(
                    columns=tuple(
                        Column(name, j, 0.0, 100.0, bins) for j, name in enumerate(ASKED)
                    ),
                    max_rows=rows,
                )
                bound, scale = secure_encoding(spec, n_clients=cohort)
                k = neighbour_count(cohort)
                columns = [
                    {"feature": j, "bins": bins, "lo": 0.0, "hi": 100.0} for j in range(len(ASKED))
                ]
                started = time.monotonic()
                out = page.evaluate(
                    "(a) => window.benchCase(a)",
                    {
                        "csv": csv,
                        "names": ASKED,
                        "columns": columns,
                        "wasmUrl": f"/k/{wasm.name}",
                        "sha256": sha256,
                        "n": cohort,
                        "k": k,
                        "threshold": k // 2 + 1,
                        "scale": scale,
                        "bound": bound,
                        "repeats": repeats,
                    },
                )
                if out["status"] != 0 or out["rows"] != rows:
                    raise RuntimeError(f"the kernel's summary is wrong: {out}")
                median = {key: statistics.median(v) for key, v in out["times"].items()}
                results.append(
                    {
                        "rows": rows,
                        "csv_bytes": len(csv.encode()),
                        "columns_in_file": len(COLUMN_NAMES),
                        "columns_asked": len(ASKED),
                        "bins": bins,
                        "dimension": out["dimension"],
                        "cohort": cohort,
                        "neighbours": out["neighbours"],
                        "read_ms": round(median["read"], 2),
                        "summarise_ms": round(median["summarise"], 2),
                        "mask_ms": round(median["mask"], 2),
                        "contribution_ms": round(median["summarise"] + median["mask"], 2),
                        "case_seconds": round(time.monotonic() - started, 1),
                    }
                )
                agent = out["agent"]
            version = browser.version
            browser.close()
    finally:
        site.close()
    load.append(os.getloadavg())
    return {
        "chromium": version,
        "user_agent": agent,
        "repeats": repeats,
        "load_average_before_after": [round(x[0], 2) for x in load],
        "cases": results,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        "| rows | CSV | bins | d | neighbours | read CSV | summarise | mask | summarise + mask |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["cases"]:
        lines.append(
            f"| {c['rows']:,} | {c['csv_bytes'] / 1e6:.1f} MB | {c['bins']} | {c['dimension']} | "
            f"{c['neighbours']} | {c['read_ms']} ms | {c['summarise_ms']} ms | {c['mask_ms']} ms "
            f"| {c['contribution_ms']} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 rows only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cohort", type=int, default=100, help="clients in the secure round")
    args = parser.parse_args(argv)
    rows = [10_000] if args.quick else [10_000, 100_000]
    cases = [(r, bins) for r in rows for bins in (16, 1024)]
    report = run(cases, cohort=args.cohort, repeats=args.repeats)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))  # noqa: T201 - the benchmark's report
    print(  # noqa: T201
        f"\nChromium {report['chromium']}; load average before/after "
        f"{report['load_average_before_after']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
