"""Fixtures for the WASM kernel tests: build the kernels once and hand out runners."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WASM_DIR = ROOT / "wasm"
BUILD_DIR = WASM_DIR / "build"
EDGE_WORKER_DIR = ROOT / "edge_worker"

if str(EDGE_WORKER_DIR) not in sys.path:
    sys.path.insert(0, str(EDGE_WORKER_DIR))

from ccgsc_worker import abi  # noqa: E402
from ccgsc_worker.kernel import KernelRunner  # noqa: E402


class BuiltKernels:
    """The built kernels and their manifest."""

    def __init__(self, manifest: dict) -> None:
        self.manifest = manifest
        self.entries = {k["name"]: k for k in manifest["kernels"]}
        self.training = {k["name"]: k for k in manifest.get("training_kernels", [])}
        self.entries.update(self.training)

    def path(self, name: str) -> Path:
        """Path of a built kernel module."""
        return BUILD_DIR / self.entries[name]["file"]

    def runner(self, name: str, **kwargs: object) -> KernelRunner:
        """A wasmtime runner for a built kernel, pinned to its manifest digest.

        Training kernels get their manifest limits unless ``limits`` is given.
        """
        entry = self.entries[name]
        if name in self.training and "limits" not in kwargs:
            kwargs["limits"] = abi.limits_for("train", entry["limits"])
        return KernelRunner(self.path(name).read_bytes(), entry["sha256"], **kwargs)


@pytest.fixture(scope="session")
def kernels() -> BuiltKernels:
    """Build the kernels (a no-op when up to date) and return them."""
    subprocess.run([sys.executable, str(WASM_DIR / "build.py"), "--quiet"], check=True)
    return BuiltKernels(json.loads((BUILD_DIR / "manifest.json").read_text()))


@pytest.fixture
def run_kernel(kernels: BuiltKernels) -> Callable[..., bytes]:
    """Run a built kernel on one task: run_kernel(name, lo, hi, seed=0, params=())."""
    runners: dict[str, KernelRunner] = {}

    def run(name: str, lo: int, hi: int, seed: int = 0, params: tuple = ()) -> bytes:
        if name not in runners:
            runners[name] = kernels.runner(name)
        return runners[name].run(abi.encode_input(lo, hi, seed, params))

    return run


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Debian's) through Playwright, for the cross-host tests."""
    from playwright.sync_api import sync_playwright

    from tests.e2e.conftest import CHROMIUM_ARGS

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()
