"""The worker page trains FL rounds exactly like the edge worker: for the same invite (weights,
shard, kernel, seed, hyperparameters) the body the page's ``training.js`` uploads, chunk by chunk
through its resumable upload, is byte-identical to the edge worker's ``train_update`` body.

The Python side is computed here with wasmtime; the JavaScript side runs under Node
(tests/js/training-replay.mjs) through the same kernels against an in-memory site that follows
the upload protocol (a chunk lost in transit, a chunk damaged on the way)."""

from __future__ import annotations

import array
import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ccgsc_worker.compression import ResidualStore, encoded_bytes
from ccgsc_worker.kernel import KernelRunner
from ccgsc_worker.training import (
    METRICS,
    compress_body,
    control_correction,
    decode_shard,
    scaffold_body,
    train_update,
)
from jobs.aggregation import SignVote, SparseUpdate, int8_decode
from jobs.fl_shards import encode_shard
from jobs.services.fl_data import partition_shards
from jobs.services.fl_init import initial_weights

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "wasm" / "build"
NODE = shutil.which("node")
CHUNK_BYTES = 16 * 1024

# (kernel, sizes, epochs, momentum, proximal mu, learning rate, seed, extra hyperparameters): one
# epoch (the kernel's own output), several epochs with momentum carried and a proximal term (the
# page sums the steps and takes the norm with an exact sum), the demo job's 2NN, and DP jobs whose
# clip norm cuts the update (one epoch, several) or leaves it within (the header's norm is then
# the exact one, not the kernel's), and SCAFFOLD jobs with the server's c alone (a client the
# server holds no cᵢ for) and with c and cᵢ, one of them under DP as well; and compressed jobs:
# int8 (a seed above 2³¹), top-k over two consecutive rounds of one job (the second sends part of
# the first's residual) and signSGD.
CASES_JOB = "00000000-0000-4000-8000-0000000000f1"
INT8 = {"scheme": "int8", "seed": 4_000_000_001}
TOPK = {"scheme": "topk", "k": 1_000}
CASES = [
    ("logreg", [64, 10], 1, 0.0, 0.0, 0.1, "99", {}),
    ("logreg", [64, 10], 3, 0.9, 0.01, 0.05, "18446744073709551615", {}),
    ("mlp", [64, 200, 200, 10], 2, 0.5, 0.0, 0.05, "4034321", {}),
    ("logreg", [64, 10], 1, 0.0, 0.0, 0.1, "7", {"dp": {"clip_norm": 0.05}}),
    ("mlp", [64, 200, 200, 10], 2, 0.5, 0.0, 0.05, "8", {"dp": {"clip_norm": 0.3}}),
    ("logreg", [64, 10], 1, 0.0, 0.0, 0.1, "9", {"dp": {"clip_norm": 1e6}}),
    ("logreg", [64, 10], 1, 0.0, 0.0, 0.1, "10", {"scaffold": "c"}),
    ("mlp", [64, 200, 200, 10], 2, 0.5, 0.0, 0.05, "11", {"scaffold": "c+ci"}),
    ("logreg", [64, 10], 3, 0.0, 0.0, 0.05, "12", {"scaffold": "c+ci", "dp": {"clip_norm": 0.1}}),
    ("mlp", [64, 200, 200, 10], 1, 0.0, 0.0, 0.05, "13", {"compression": INT8}),
    ("mlp", [64, 200, 200, 10], 1, 0.0, 0.0, 0.05, "14", {"compression": TOPK}),
    ("mlp", [64, 200, 200, 10], 2, 0.5, 0.0, 0.05, "15", {"compression": TOPK}),
    ("logreg", [64, 10], 2, 0.0, 0.0, 0.1, "16", {"compression": {"scheme": "signsgd"}}),
]
DP_CLIPPED = (3, 4)


def _invite(kernel: str, sizes: list[int], weights: bytes, wasm: bytes, **hyper: Any) -> dict:
    return {
        "type": "round_invite",
        "job": CASES_JOB,
        "round": 1,
        "participation": 7,
        "seed": hyper.pop("seed"),
        "model": {
            "version": 4,
            "sha256": hashlib.sha256(weights).hexdigest(),
            "url": "/weights/w.f32",
            "parameters": len(weights) // 4,
            "sizes": sizes,
        },
        "kernel": {
            "name": kernel,
            "sha256": hashlib.sha256(wasm).hexdigest(),
            "url": f"/fl/kernels/{kernel}.wasm",
        },
        "hyperparameters": {"batch_size": 10, **hyper},
        "data": {"source": "public_partition", "private": False, "url": "/fl/shards/j/1.bin"},
        "upload": {"url": "/fl/uploads/", "chunk_bytes": CHUNK_BYTES, "total_bytes": 0},
        "deadline_ms": 60_000,
    }


def _python_body(
    invite: dict, wasm: bytes, weights: bytes, shard: bytes, controls: dict[str, bytes]
) -> bytes:
    """The edge worker's body: train_update, and for SCAFFOLD its correction and scaffold_body."""
    x, y, _n, _features = decode_shard(shard)
    control = controls.get("control")
    correction = control and control_correction(control, controls.get("client_control"))
    body = train_update(
        KernelRunner(wasm, invite["kernel"]["sha256"]),
        sizes=invite["model"]["sizes"],
        weights=weights,
        x=x,
        y=y,
        hyperparameters=invite["hyperparameters"],
        seed=int(invite["seed"]),
        time_left=lambda: 1e9,
        control=correction,
    )
    if control is None:
        return body
    return scaffold_body(body, control=control, hyperparameters=invite["hyperparameters"])


def _controls(options: dict, parameters: int, number: int, tmp_path: Path) -> dict[str, bytes]:
    """SCAFFOLD's c (and cᵢ) as the server would serve them: small f32 values, written to disk."""
    names = {"c": ["control"], "c+ci": ["control", "client_control"]}[options["scaffold"]]
    rng = np.random.default_rng(number)
    controls = {}
    for name in names:
        vector = rng.normal(0, 0.01, parameters).astype("<f4").tobytes()
        (tmp_path / f"{name}{number}.f32").write_bytes(vector)
        controls[name] = vector
    return controls


@pytest.mark.skipif(not (BUILD / "mlp.wasm").exists(), reason="the WASM kernels are not built")
def test_the_page_uploads_the_edge_workers_body_byte_for_byte(tmp_path: Path) -> None:
    if NODE is None:
        pytest.fail("node is needed for the worker page's training tests")
    # given one public shard of the 2-shard non-IID digits partition and several invites (the
    # top-k residual carried from one round of the job to the next, as both clients keep it)
    residuals = ResidualStore()
    dense: dict[int, bytes] = {}
    x, y, classes = partition_shards(
        dataset="digits", partition="shards", clients=2, seed=3, alpha=None, per_client=2
    )[1]
    shard = encode_shard(x, y, classes)
    (tmp_path / "shard.bin").write_bytes(shard)
    cases, expected = [], []
    for number, (kernel, sizes, epochs, momentum, mu, rate, seed, extra) in enumerate(CASES):
        wasm = (BUILD / f"{kernel}.wasm").read_bytes()
        weights = initial_weights(kernel, sizes, seed=number + 1).astype("<f4").tobytes()
        (tmp_path / f"w{number}.f32").write_bytes(weights)
        hyper = {"epochs": epochs, "momentum": momentum, "proximal_mu": mu, "learning_rate": rate}
        hyper |= {key: value for key, value in extra.items() if key != "scaffold"}
        invite = _invite(kernel, sizes, weights, wasm, seed=seed, **hyper)
        files = {}
        controls = (
            _controls(extra, len(weights) // 4, number, tmp_path) if "scaffold" in extra else {}
        )
        for name, vector in controls.items():
            url = f"/fl/controls/{name}{number}.f32"
            invite["model"][name] = {"url": url, "sha256": hashlib.sha256(vector).hexdigest()}
            files[url] = str(tmp_path / f"{name}{number}.f32")
        # when the edge worker computes its body here
        expected.append(_python_body(invite, wasm, weights, shard, controls))
        if "compression" in extra:
            dense[number] = expected[-1]
            expected[-1] = compress_body(
                expected[-1],
                compression=extra["compression"],
                job=invite["job"],
                residuals=residuals,
            )
            residuals.commit(invite["job"])
        invite["upload"]["total_bytes"] = len(expected[-1])
        cases.append(
            {
                "invite": invite,
                "files": {
                    "/weights/w.f32": str(tmp_path / f"w{number}.f32"),
                    "/fl/shards/j/1.bin": str(tmp_path / "shard.bin"),
                    f"/fl/kernels/{kernel}.wasm": str(BUILD / f"{kernel}.wasm"),
                    **files,
                },
                "drop": [1] if number == 2 else [],
                "corrupt": [0] if number == 1 else [],
            }
        )
    # and the page's training.js trains and uploads the same rounds under Node
    done = subprocess.run(
        [NODE, str(ROOT / "tests" / "js" / "training-replay.mjs")],
        input=json.dumps({"cases": cases}),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    # then every round is uploaded and the assembled bodies are identical, byte for byte
    for number, (result, body) in enumerate(zip(results, expected, strict=True)):
        assert (result["code"], result["message"]) == ("uploaded", ""), number
        uploaded = base64.b64decode(result["body_b64"])
        assert hashlib.sha256(uploaded).hexdigest() == hashlib.sha256(body).hexdigest(), number
        assert uploaded == body
        status, samples, loss_sum, _correct, d, norm = METRICS.unpack(body[:32])
        parts = 2 if "scaffold" in CASES[number][7] else 1  # SCAFFOLD appends Δc f32[d]
        compression = CASES[number][7].get("compression")
        payload = (
            encoded_bytes(compression["scheme"], d, k=compression.get("k", 0)) // 4
            if compression
            else parts * d
        )
        assert (status, samples, payload) == (0, len(y), len(body[32:]) // 4)
        assert np.isfinite(loss_sum)
        assert norm > 0
        # and each chunk carried its own SHA-256
        chunks = [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)]
        digests = {hashlib.sha256(chunk).hexdigest() for chunk in chunks}
        assert digests <= set(result["chunk_headers"])
    # and the multi-epoch norm is the exact norm of the summed update, as Python's fsum gives it
    update = array.array("f", expected[1][32:])
    assert METRICS.unpack(expected[1][:32])[5] == pytest.approx(
        float(np.linalg.norm(np.asarray(update, dtype=np.float64))), rel=1e-12
    )
    # and DP clipping cut the update to its clip norm, which the header carries
    for number in DP_CLIPPED:
        clip_norm = CASES[number][7]["dp"]["clip_norm"]
        norm = METRICS.unpack(expected[number][:32])[5]
        assert norm == pytest.approx(clip_norm, rel=1e-6)
        exact = np.linalg.norm(np.frombuffer(expected[number][32:], "<f4").astype(np.float64))
        assert norm == pytest.approx(float(exact), rel=1e-12)
    # and SCAFFOLD's bodies fetched c (and cᵢ) by hash and end with Δc = −c − Δy / (K·η)
    for number, (_k, _s, epochs, _m, _mu, rate, _seed, extra) in enumerate(CASES):
        if "scaffold" not in extra:
            continue
        assert results[number]["log"].count(f"GET /fl/controls/control{number}.f32") == 1
        body = expected[number]
        d = METRICS.unpack(body[:32])[4]
        update = np.frombuffer(body[32 : 32 + 4 * d], "<f4").astype(np.float64)
        control = np.frombuffer((tmp_path / f"control{number}.f32").read_bytes(), "<f4")
        steps = epochs * -(-len(y) // min(10, len(y)))
        delta = (-control.astype(np.float64) - update / (steps * rate)).astype("<f4")
        assert body[32 + 4 * d :] == delta.tobytes()
    # and the compressed payloads decode to what the dense update says: int8 within one step of
    # each block, top-k's sent part plus its residual equal to the update plus the last residual,
    # signSGD's vote the update's signs
    int8 = next(n for n, case in enumerate(CASES) if case[7].get("compression") == INT8)
    update = np.frombuffer(dense[int8], "<f4", offset=32)
    decoded = int8_decode(expected[int8][32:])
    assert np.all(np.abs(decoded - update) <= np.abs(update).max() / 127 * (1 + 1e-6))
    first, second = (n for n, case in enumerate(CASES) if case[7].get("compression") == TOPK)
    residual = np.zeros(len(update), np.float32)
    for number in (first, second):
        sparse = SparseUpdate.decode(expected[number][32:])
        assert sparse.indices.shape == (1_000,)
        corrected = np.frombuffer(dense[number], "<f4", offset=32) + residual
        kept = np.zeros(len(update), bool)
        kept[sparse.indices] = True
        assert np.abs(corrected[kept]).min() >= np.abs(corrected[~kept]).max()
        np.testing.assert_array_equal(sparse.values, corrected[kept])
        residual = np.where(kept, np.float32(0), corrected).astype(np.float32)
    np.testing.assert_array_equal(residuals.residual(CASES_JOB, len(update)), residual)
    sign = len(CASES) - 1
    vote = SignVote(len(dense[sign][32:]) // 4)
    vote.fold("a", expected[sign][32:])
    signs = np.where(np.frombuffer(dense[sign], "<f4", offset=32) >= 0, 1, -1)
    np.testing.assert_array_equal(vote.finish(), signs.astype(np.float32))
    # and the resumable upload did its job: a lost chunk asked for the state again, a damaged
    # one was sent twice
    assert results[2]["log"].count("POST /fl/uploads/") == 2
    assert results[2]["log"].count("PUT /fl/uploads/u1/chunks/0") == 1
    assert results[1]["log"].count("PUT /fl/uploads/u1/chunks/0") == 2
