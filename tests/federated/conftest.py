"""Fixtures for the FL core: built training kernels and the digits split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "edge_worker") not in sys.path:
    sys.path.insert(0, str(ROOT / "edge_worker"))

from jobs.federated import client, data  # noqa: E402


@pytest.fixture(scope="session")
def built_kernels() -> Path:
    """Build the kernels (a no-op when up to date); the build directory."""
    subprocess.run([sys.executable, str(ROOT / "wasm" / "build.py"), "--quiet"], check=True)
    return ROOT / "wasm" / "build"


@pytest.fixture(scope="session")
def logreg(built_kernels: Path) -> client.TrainingKernel:
    return client.load_training_kernel("logreg", built_kernels)


@pytest.fixture(scope="session")
def mlp(built_kernels: Path) -> client.TrainingKernel:
    return client.load_training_kernel("mlp", built_kernels)


@pytest.fixture(scope="session")
def digits_split() -> tuple[data.Dataset, data.Dataset]:
    return data.train_test_split(data.load_digits(), seed=0)
