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
import http.server
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_kernels  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.e2e.conftest import CHROMIUM_ARGS  # noqa: E402 - the flags the browser tests use

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


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the page, the kernel runtime and the built kernels; nothing else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(ROOT), **kwargs)

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        if path.startswith("/rt/"):
            return str(ROOT / "static" / "worker_frontend" / Path(path[4:]).name)
        if path.startswith("/k/"):
            return str(bench_kernels.BUILD_DIR / Path(path[3:]).name)
        return str(ROOT / "nonexistent")

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] in ("/", "/index.html"):
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def guess_type(self, path: Any) -> str:
        if str(path).endswith(".wasm"):
            return "application/wasm"
        if str(path).endswith(".js"):
            return "text/javascript"
        return super().guess_type(path)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return


class ChromiumHost:
    """A headless Chromium page that runs kernels; started on first use."""

    def __init__(self) -> None:
        self._pw: Any = None
        self._browser: Any = None
        self._page: Any = None
        self._server: http.server.ThreadingHTTPServer | None = None
        self.version: str | None = None
        self.user_agent: str | None = None

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        executable = chromium_executable()
        if executable is None:
            raise RuntimeError("no chromium on PATH (set CHROMIUM to its path)")
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        self.version = self._browser.version
        self._page = self._browser.new_page()
        port = self._server.server_address[1]
        self._page.goto(f"http://127.0.0.1:{port}/")
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
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


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
