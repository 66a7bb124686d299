"""Update validation codes, and the package's independence from Django."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs.aggregation import RejectionCode, UpdateRejected, validate_update
from jobs.aggregation.validation import validate_weight

ROOT = Path(__file__).resolve().parents[2]
f32 = np.float32


def test_valid_update_returns_its_norm():
    assert validate_update(np.array([3, 4], dtype=f32), dimension=2, max_norm=5.0) == 5.0


@pytest.mark.parametrize(
    ("update", "code"),
    [
        ([1.0, 2.0], RejectionCode.WRONG_DTYPE),
        (np.array([1, 2], dtype=np.float64), RejectionCode.WRONG_DTYPE),
        (np.array([1, 2], dtype=">f4"), RejectionCode.WRONG_DTYPE),
        (np.ones((1, 2), dtype=f32), RejectionCode.WRONG_SHAPE),
        (np.ones(3, dtype=f32), RejectionCode.WRONG_LENGTH),
        (np.array([np.nan, 1], dtype=f32), RejectionCode.NON_FINITE),
        (np.array([-np.inf, 1], dtype=f32), RejectionCode.NON_FINITE),
        (np.array([3, 4.001], dtype=f32), RejectionCode.NORM_EXCEEDED),
    ],
)
def test_bad_updates_are_rejected_with_a_code(update, code):
    with pytest.raises(UpdateRejected) as raised:
        validate_update(update, dimension=2, max_norm=5.0)
    assert raised.value.code == code
    assert raised.value.message


def test_huge_finite_values_are_a_norm_problem_not_non_finite():
    update = np.full(4, np.finfo(f32).max, dtype=f32)
    assert np.isfinite(validate_update(update, dimension=4))
    with pytest.raises(UpdateRejected) as raised:
        validate_update(update, dimension=4, max_norm=1e30)
    assert raised.value.code == RejectionCode.NORM_EXCEEDED


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf"), True, "3"])
def test_bad_weights_are_rejected(weight):
    with pytest.raises(UpdateRejected) as raised:
        validate_weight(weight)
    assert raised.value.code == RejectionCode.BAD_WEIGHT


def test_aggregation_imports_without_django():
    code = (
        "import sys, jobs.aggregation; "
        "loaded = [m for m in sys.modules if m == 'django' or m.startswith('django.')]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
