"""The analytics kernel (ABI v3): its output equals the numpy reference byte for byte, in
wasmtime and in Node, and malformed inputs are refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess

import numpy as np
import pytest

from ccgsc_worker import abi
from ccgsc_worker.analytics_abi import ColumnSpec, decode_output, encode_input
from ccgsc_worker.kernel import KernelRunner
from jobs.analytics import Column, QuerySpec, summarize, summarize_body
from jobs.federated.data import load_digits
from tests.kernels.conftest import BUILD_DIR, WASM_DIR

NODE = shutil.which("node")


@pytest.fixture(scope="module")
def analytics_runner(kernels) -> KernelRunner:
    manifest = json.loads((BUILD_DIR / "manifest.json").read_text())
    entry = manifest["analytics_kernels"][0]
    limits = abi.limits_for("analytics", entry["limits"])
    return KernelRunner((BUILD_DIR / entry["file"]).read_bytes(), entry["sha256"], limits=limits)


def _columns(spec: QuerySpec) -> list[ColumnSpec]:
    return [ColumnSpec(c.feature, c.bins, c.lo, c.hi) for c in spec.columns]


def _run(runner: KernelRunner, x: np.ndarray, spec: QuerySpec) -> bytes:
    x32 = np.ascontiguousarray(x, dtype="<f4")
    data = encode_input(
        _columns(spec), x32.tobytes(), rows=x32.shape[0], features=x32.shape[1],
        max_rows=spec.max_rows,
    )  # fmt: skip
    return runner.run(data)


def _awkward_rows(seed: int, n: int = 300, features: int = 5) -> np.ndarray:
    """Normal values spilling past the bounds, with NaN, ±Inf and values exactly on them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 2.0, (n, features)).astype(np.float32)
    x[rng.integers(0, n, 10), 0] = np.nan
    x[rng.integers(0, n, 5), 1] = np.inf
    x[rng.integers(0, n, 5), 1] = -np.inf
    x[:3, 2] = [-1.5, 1.5, 0.0]
    return x


SPEC = QuerySpec(
    columns=(
        Column("a", 0, -3.0, 3.0, 12),
        Column("b", 1, -1.0, 4.0, 7),
        Column("c", 2, -1.5, 1.5, 1),
        Column("a_again", 0, 0.25, 0.75, 33),
    ),
    max_rows=250,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernel_output_equals_the_numpy_reference_byte_for_byte(analytics_runner, seed) -> None:
    """Given rows with NaN, ±Inf, out-of-bound and on-bound values and a row cap, the kernel's
    whole output (metrics header and vector) is the reference's bytes."""
    x = _awkward_rows(seed)
    out = _run(analytics_runner, x, SPEC)
    assert out == summarize_body(x, SPEC)
    summary = decode_output(out, columns=_columns(SPEC))
    assert (summary.status, summary.rows, summary.dimension) == (0, 250, SPEC.dimension)
    vector = np.frombuffer(summary.vector, dtype="<f4")
    finite_a = np.isfinite(x[:250, 0]).sum()
    assert vector[0] == finite_a  # NaN rows are not counted
    assert vector[3 : 3 + 12].sum() == finite_a  # every counted value lands in one bin


def test_vectors_of_shards_add_up_to_the_vector_of_their_union(analytics_runner) -> None:
    """Digits features (multiples of 1/16) sum exactly in float32: shard vectors add up to the
    union's vector, which is what the server's sum relies on."""
    x = load_digits().x
    spec = QuerySpec(
        columns=tuple(Column(f"px{i}", i, 0.0, 1.0, 16) for i in (10, 20, 36, 43)),
        max_rows=10_000,
    )
    shards = np.array_split(x, 3)
    parts = [np.frombuffer(_run(analytics_runner, s, spec)[32:], dtype="<f4") for s in shards]
    total = np.sum([p.astype(np.float64) for p in parts], axis=0)
    assert np.array_equal(total, summarize(x, spec).astype(np.float64))


def test_malformed_inputs_are_refused(analytics_runner) -> None:
    """A wrong length, zero columns, a feature past the row, bad bounds, an unknown op or a
    non-zero reserved word return the ABI's bad-input code."""
    good = encode_input([ColumnSpec(0, 4, 0.0, 1.0)], b"\0" * 8, rows=2, features=1, max_rows=0)
    assert len(analytics_runner.run(good)) == 32 + 4 * 7

    def patched(offset: int, fmt: str, value: object) -> bytes:
        data = bytearray(good)
        struct.pack_into(fmt, data, offset, value)
        return bytes(data)

    bad = [
        good[:-4],
        patched(0, "<I", 2),  # op
        patched(12, "<I", 0),  # columns
        patched(20, "<I", 1),  # reserved
        patched(32, "<I", 1),  # feature index past f
        patched(36, "<I", 0),  # zero bins
        patched(36, "<I", 1025),  # too many bins
        patched(40, "<f", 1.0),  # lo == hi
        patched(44, "<f", float("nan")),  # hi not finite
    ]
    for data in bad:
        with pytest.raises(Exception, match="-1|bad input"):
            analytics_runner.run(data)


def test_wasmtime_and_node_agree(analytics_runner, tmp_path) -> None:
    """Node runs the same inputs to the same output bytes."""
    assert NODE is not None, "node is part of the development set-up"
    paths, digests = [], []
    for seed in range(3):
        x = np.ascontiguousarray(_awkward_rows(seed + 10), dtype="<f4")
        data = encode_input(
            _columns(SPEC), x.tobytes(), rows=x.shape[0], features=x.shape[1], max_rows=0
        )
        path = tmp_path / f"{seed}.bin"
        path.write_bytes(data)
        paths.append(path)
        digests.append(hashlib.sha256(analytics_runner.run(data)).hexdigest())
    manifest = json.loads((BUILD_DIR / "manifest.json").read_text())
    module = BUILD_DIR / manifest["analytics_kernels"][0]["file"]
    result = subprocess.run(
        [NODE, str(WASM_DIR / "run_node.mjs"), "--digest", str(module), *(f"@{p}" for p in paths)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert result.stdout.split() == digests
