"""Runs the worker page's JavaScript unit tests (node --test) as part of the suite."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_worker_page_javascript_units():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the worker page's unit tests")
    result = subprocess.run(
        [node, "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
