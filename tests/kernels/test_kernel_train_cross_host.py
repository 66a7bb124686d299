"""Cross-host determinism of the training kernels: the same input bytes give the same output
bytes (compared by sha256) in wasmtime, Node and headless Chromium, and the Python and
JavaScript encoders produce the same input bytes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ccgsc_worker import abi
from tests.kernels import train_reference as ref
from tests.kernels.conftest import ROOT, WASM_DIR
from tests.static_site import StaticSite

NODE = shutil.which("node")
CHROMIUM = "/usr/bin/chromium"
TWO_NN = [784, 200, 200, 10]


def _data(n: int, features: int, classes: int, seed: int, u8: bool):
    rng = np.random.default_rng(seed)
    if u8:
        x = rng.integers(0, 256, (n, features), dtype=np.uint8)
    else:
        x = rng.normal(size=(n, features)).astype(np.float32)
    return x, rng.integers(0, classes, n)


def cases() -> list[tuple[str, str, bytes]]:
    """(kernel, label, input bytes): train with every option, eval, and a non-finite input."""
    out = []
    x, y = _data(300, 64, 10, 1, u8=False)
    w = ref.init_dense([64, 10], 1)
    out.append(("logreg", "train sgd", abi.encode_train_input(
        op="train", sizes=[64, 10], weights=w, x=x, y=y, batch_size=10, seed=3,
        learning_rate=0.1)))  # fmt: skip
    out.append(("logreg", "eval", abi.encode_train_input(
        op="eval", sizes=[64, 10], weights=w, x=x, y=y, batch_size=32)))  # fmt: skip
    x, y = _data(130, 784, 10, 2, u8=True)
    w = ref.init_dense(TWO_NN, 2)
    control = np.random.default_rng(5).normal(0, 1e-3, w.size).astype(np.float32)
    out.append(("mlp", "2NN momentum prox control", abi.encode_train_input(
        op="train", sizes=TWO_NN, weights=w, x=x, y=y, batch_size=10, seed=7,
        learning_rate=0.05, momentum=0.9, prox_mu=0.01, control=control,
        momentum_buffer=control, return_momentum=True)))  # fmt: skip
    out.append(("mlp", "2NN B=64", abi.encode_train_input(
        op="train", sizes=TWO_NN, weights=w, x=x, y=y, batch_size=64, seed=8,
        learning_rate=0.1)))  # fmt: skip
    bad = w.copy()
    bad[17] = np.nan
    out.append(("mlp", "non-finite weights", abi.encode_train_input(
        op="train", sizes=TWO_NN, weights=bad, x=x, y=y, batch_size=10)))  # fmt: skip
    x, y = _data(9, 784, 10, 3, u8=True)
    out.append(("cnn", "cnn", abi.encode_train_input(
        op="train", sizes=[784, 10], n_params=ref.CNN_PARAMS, weights=ref.init_cnn(1), x=x, y=y,
        batch_size=4, seed=1, learning_rate=0.05, momentum=0.5)))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def expected(kernels, tmp_path_factory) -> list[tuple[str, str, Path, str]]:
    """Each case's input file and the sha256 of wasmtime's output."""
    directory = tmp_path_factory.mktemp("v2-inputs")
    rows = []
    for index, (name, label, data) in enumerate(cases()):
        path = directory / f"{index}.bin"
        path.write_bytes(data)
        digest = hashlib.sha256(kernels.runner(name).run(data)).hexdigest()
        rows.append((name, label, path, digest))
    return rows


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_wasmtime_and_node_agree(kernels, expected) -> None:
    """Node runs the same inputs to the same output bytes."""
    for name in ("logreg", "mlp", "cnn"):
        rows = [r for r in expected if r[0] == name]
        result = subprocess.run(
            [NODE, str(WASM_DIR / "run_node.mjs"), "--digest", str(kernels.path(name)),
             *(f"@{r[2]}" for r in rows)],
            capture_output=True, text=True, check=True, timeout=300,
        )  # fmt: skip
        assert result.stdout.split() == [r[3] for r in rows], name


ENCODE_JS = """
import { encodeTrainInput } from "./static/worker_frontend/kernel-runtime.js";
import { createHash } from "node:crypto";
const c = JSON.parse(process.argv[1]);
const bytes = encodeTrainInput({
  op: c.op, sizes: c.sizes, weights: Float32Array.from(c.weights),
  x: c.u8 ? Uint8Array.from(c.x) : Float32Array.from(c.x), y: c.y, batchSize: c.batch_size,
  seed: BigInt(c.seed), learningRate: c.lr, momentum: c.momentum, proxMu: c.mu,
  control: c.control ? Float32Array.from(c.control) : null, returnMomentum: c.return_momentum,
});
console.log(createHash("sha256").update(bytes).digest("hex"));
"""


@pytest.mark.skipif(NODE is None, reason="needs node")
@pytest.mark.parametrize("u8", [False, True])
def test_python_and_javascript_encoders_agree(u8: bool) -> None:
    """encode_train_input and encodeTrainInput write the same bytes."""
    sizes = [5, 4, 3]
    x, y = _data(7, 5, 3, 4, u8=u8)
    w = ref.init_dense(sizes, 3)
    call = {"op": "train", "sizes": sizes, "weights": w.tolist(), "x": x.ravel().tolist(),
            "u8": u8, "y": y.tolist(), "batch_size": 3, "seed": str(2**63 + 5), "lr": 0.1,
            "momentum": 0.9, "mu": 0.25, "control": w.tolist(), "return_momentum": True}  # fmt: skip
    data = abi.encode_train_input(
        op="train", sizes=sizes, weights=w, x=x, y=y, batch_size=3, seed=2**63 + 5,
        learning_rate=0.1, momentum=0.9, prox_mu=0.25, control=w, return_momentum=True,
    )  # fmt: skip
    result = subprocess.run(
        [NODE, "--input-type=module", "-e", ENCODE_JS, json.dumps(call)],
        capture_output=True, text=True, check=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.stdout.strip() == hashlib.sha256(data).hexdigest()


PAGE = b"""<!doctype html><meta charset="utf-8"><title>v2</title>
<script type="module">
import { compileVerified, runKernel } from "/rt/kernel-runtime.js";
import { sha256Hex } from "/rt/protocol.js";
window.runDigests = async (kernelUrl, sha256, limits, inputUrls) => {
  const bytes = new Uint8Array(await (await fetch(kernelUrl)).arrayBuffer());
  const module = await compileVerified(bytes, sha256);
  const digests = [];
  for (const url of inputUrls) {
    const input = new Uint8Array(await (await fetch(url)).arrayBuffer());
    digests.push(await sha256Hex(runKernel(module, input, limits)));
  }
  return digests;
};
window.workerTrain = (kernel, call) => new Promise((resolve, reject) => {
  // The contribute page's own Web Worker, asked for one training call.
  const worker = new Worker("/rt/kernel-worker.js", { type: "module" });
  worker.onmessage = async ({ data }) => {
    if (data.type === "trained") {
      const u = data.result.update;
      const bytes = new Uint8Array(u.buffer, u.byteOffset, u.byteLength);
      resolve({ ok: data.result.ok, samples: data.result.samples, correct: data.result.correct,
                lossSum: data.result.lossSum, updateSha256: await sha256Hex(bytes) });
      worker.terminate();
    } else if (data.type === "failed") {
      reject(new Error(`${data.code}: ${data.message}`));
      worker.terminate();
    }
  };
  worker.postMessage({ type: "init", token: "test" });
  worker.postMessage({ type: "train", id: 1, kernel, call: {
    ...call, weights: Float32Array.from(call.weights), x: Float32Array.from(call.x),
    seed: BigInt(call.seed) } });
});
window.ready = true;
</script>"""


def _site(inputs: Path) -> StaticSite:
    """The page, the worker runtime, the built kernels and the test inputs, on loopback."""
    return StaticSite(
        PAGE,
        {"/rt/": ROOT / "static" / "worker_frontend", "/k/": WASM_DIR / "build", "/in/": inputs},
    )


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")
def test_wasmtime_and_chromium_agree(kernels, expected, browser) -> None:
    """Chromium, through the worker page's own runtime, gives the same output bytes."""
    with _site(expected[0][2].parent) as site:
        page = browser.new_page()
        page.goto(site.url)
        page.wait_for_function("window.ready === true")
        for name in ("logreg", "mlp", "cnn"):
            rows = [r for r in expected if r[0] == name]
            entry = kernels.entries[name]
            limits = {
                "inputBytes": entry["limits"]["input_bytes"],
                "outputBytes": entry["limits"]["output_bytes"],
                "memoryBytes": entry["limits"]["memory_bytes"],
            }
            digests = page.evaluate(
                "([k, sha, limits, urls]) => window.runDigests(k, sha, limits, urls)",
                [
                    f"/k/{entry['file']}",
                    entry["sha256"],
                    limits,
                    [f"/in/{r[2].name}" for r in rows],
                ],
            )
            assert digests == [r[3] for r in rows], name


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")
def test_browser_worker_trains_like_wasmtime(kernels, expected, browser) -> None:
    """The page's kernel-worker.js fetches, verifies and runs a v2 call: same update bytes."""
    sizes = [20, 16, 8, 3]
    x, y = _data(40, 20, 3, 6, u8=False)
    w = ref.init_dense(sizes, 6)
    result = kernels.runner("mlp").train(
        abi.encode_train_input(
            op="train", sizes=sizes, weights=w, x=x, y=y, batch_size=8, seed=11,
            learning_rate=0.1, momentum=0.9,
        )
    )  # fmt: skip
    entry = kernels.entries["mlp"]
    call = {"op": "train", "sizes": sizes, "weights": w.tolist(), "x": x.ravel().tolist(),
            "y": y.tolist(), "batchSize": 8, "seed": "11", "learningRate": 0.1, "momentum": 0.9}  # fmt: skip
    kernel = {"sha256": entry["sha256"], "url": f"/k/{entry['file']}", "name": "mlp"}
    with _site(expected[0][2].parent) as site:
        page = browser.new_page()
        page.goto(site.url)
        page.wait_for_function("window.ready === true")
        got = page.evaluate("([k, c]) => window.workerTrain(k, c)", [kernel, call])
    assert got == {
        "ok": True,
        "samples": 40,
        "correct": result.correct,
        "lossSum": result.loss_sum,
        "updateSha256": hashlib.sha256(result.update).hexdigest(),
    }
