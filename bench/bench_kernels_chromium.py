#!/usr/bin/env python3
"""bench_kernels.py with headless Chromium as one more WASM host.

The page is served by a small HTTP server on 127.0.0.1 (a secure context, so WebCrypto is
available): the worker page's own kernel runtime (static/worker_frontend/kernel-runtime.js)
fetches the very .wasm file the other hosts run, verifies its SHA-256 against the hash
computed here before compiling it (so the module is byte-identical), runs one untimed warm-up
task, then runs every task with ``runKernel`` (a fresh instance per task, as in the worker
page) and times it with ``performance.now()``. Outputs are compared byte for byte with
wasmtime's and Node's by bench_kernels.

Usage: python bench/bench_kernels_chromium.py [--quick]
Writes bench/results/kernels.json (with a Chromium column).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_kernels  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.e2e.conftest import CHROMIUM_ARGS  # noqa: E402 - the flags the browser tests use
from tests.static_site import StaticSite  # noqa: E402

PAGE = """<!doctype html><meta charset="utf-8"><title>kernel bench</title>
<script type="module">
import { compileVerified, runKernel } from "/rt/kernel-runtime.js";
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const unhex = (h) => new Uint8Array(h.match(/../g).map((x) => parseInt(x, 16)));
window.benchRun = async (url, sha256, inputsHex, warmup) => {
  const bytes = new Uint8Array(await (await fetch(url, { cache: "no-store" })).arrayBuffer());
  const module = await compileVerified(bytes, sha256);  // throws hash_mismatch otherwise
  const inputs = inputsHex.map(unhex);
  if (warmup && inputs.length) runKernel(module, inputs[0]);
  const outputs = [], seconds = [];
  for (const input of inputs) {
    const t0 = performance.now();
    const out = runKernel(module, input);
    seconds.push((performance.now() - t0) / 1000);
    outputs.push(hex(out));
  }
  return { outputs, seconds, moduleBytes: bytes.length, agent: navigator.userAgent };
};
window.benchReady = true;
</script>"""


def chromium_executable() -> str | None:
    """The system Chromium: $CHROMIUM, else chromium (or chromium-browser) on PATH."""
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


class ChromiumHost:
    """A headless Chromium page that runs kernels; started on first use."""

    def __init__(self) -> None:
        self._pw: Any = None
        self._browser: Any = None
        self._page: Any = None
        self._site: StaticSite | None = None
        self.version: str | None = None
        self.user_agent: str | None = None

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        executable = chromium_executable()
        if executable is None:
            raise RuntimeError("no chromium on PATH (set CHROMIUM to its path)")
        self._site = StaticSite(
            PAGE,
            {
                "/rt/": ROOT / "static" / "worker_frontend",
                "/k/": bench_kernels.BUILD_DIR,
            },
        )
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        self.version = self._browser.version
        self._page = self._browser.new_page()
        self._page.goto(self._site.url)
        self._page.wait_for_function("window.benchReady === true")

    def __call__(self, kernel: Path, inputs: list[bytes]) -> tuple[list[bytes], list[float]]:
        if self._page is None:
            self._start()
        sha256 = hashlib.sha256(kernel.read_bytes()).hexdigest()
        result = self._page.evaluate(
            "([url, sha, inputs]) => window.benchRun(url, sha, inputs, true)",
            [f"/k/{kernel.name}", sha256, [d.hex() for d in inputs]],
        )
        self.user_agent = result["agent"]
        return [bytes.fromhex(h) for h in result["outputs"]], result["seconds"]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._browser is not None:
                self._browser.close()
        with contextlib.suppress(Exception):
            if self._pw is not None:
                self._pw.stop()
        if self._site is not None:
            self._site.close()


def main(argv: list[str] | None = None) -> int:
    """Run bench_kernels with Chromium registered; note the browser version in the JSON."""
    host = ChromiumHost()
    bench_kernels.register_host("chromium", functools.partial(host))
    try:
        code = bench_kernels.main(argv)
    finally:
        host.close()
    report = json.loads(bench_kernels.RESULTS.read_text())
    report["machine"]["chromium"] = host.version
    report["machine"]["chromium_user_agent"] = host.user_agent
    report["chromium_runtime"] = (
        "static/worker_frontend/kernel-runtime.js (fresh instance per task)"
    )
    bench_kernels.RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
