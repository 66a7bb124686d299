"""Fixtures for jobs: built-in kernels registered from the WASM build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def wasm_built() -> None:
    subprocess.run([sys.executable, str(ROOT / "wasm" / "build.py"), "--quiet"], check=True)


@pytest.fixture
def kernels(db, wasm_built):
    """The built-in kernels by name."""
    from jobs.kernels import kernel_sync_builtins

    return {kernel.name: kernel for kernel in kernel_sync_builtins()}
