"""Cross-host determinism: every built kernel gives byte-identical output in wasmtime and Node."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ccgsc_worker import abi
from tests.kernels.conftest import WASM_DIR

NODE = shutil.which("node")

CASES = {
    "prime_count": [
        (0, 0, 0, ()),
        (0, 1000, 0, ()),
        (1, 10**6 + 1, 0, ()),
        ((1 << 50) + 7, (1 << 50) + 30_007, 0, ()),
    ],
    "montecarlo_pi": [
        (0, 0, 1, ()),
        (0, 12_345, 1, ()),
        (999, 400_001, 2**64 - 1, ()),
        (2**63, 2**63 + 77, 3, ()),
    ],
    "param_sweep": [
        (0, 300 * 200, 0, (0, -2.0, 2.0, 300, -1.0, 3.0, 200, 64)),
        (17, 40_000, 0, (1, -5.0, 5.0, 250, -5.0, 5.0, 250, 10)),
        (0, 257 * 263, 0, (2, -5.12, 5.12, 257, -5.12, 5.12, 263, 33)),
        (3, 3, 0, (2, 0.0, 1.0, 2, 0.0, 1.0, 2, 1)),
    ],
}


@pytest.mark.skipif(NODE is None, reason="needs node")
@pytest.mark.parametrize("name", sorted(CASES))
def test_wasmtime_and_node_agree(kernels, name: str) -> None:
    """The same .wasm and input bytes give the same output bytes in both engines."""
    inputs = [abi.encode_input(lo, hi, seed, params) for lo, hi, seed, params in CASES[name]]
    runner = kernels.runner(name)
    expected = [runner.run(data).hex() for data in inputs]
    result = subprocess.run(
        [NODE, str(WASM_DIR / "run_node.mjs"), str(kernels.path(name)), *(d.hex() for d in inputs)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout.split("\n")[: len(inputs)] == expected
