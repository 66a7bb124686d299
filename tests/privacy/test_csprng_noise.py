"""The rounds' central noise: Gaussian from the operating system's CSPRNG, no seed."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from jobs.privacy import csprng_normal


def test_csprng_noise_is_gaussian_of_the_asked_std() -> None:
    d, std = 200_001, 1.7  # odd: the last Box–Muller pair is half used
    noise = csprng_normal(d, std=std)
    assert noise.shape == (d,)
    assert noise.dtype == np.float64
    assert abs(noise.std() - std) < 6 * std / math.sqrt(2 * d)
    assert abs(noise.mean()) < 6 * std / math.sqrt(d)
    inside = float(np.mean(np.abs(noise) < std))
    p = math.erf(1 / math.sqrt(2))
    assert abs(inside - p) < 6 * math.sqrt(p * (1 - p) / d)


def test_it_reads_only_the_byte_source_it_is_given() -> None:
    # The same bytes give the same noise: nothing else (no hidden seed) enters the draw.
    data = os.urandom(16 * 5)
    first = csprng_normal(10, std=2.0, random_bytes=lambda n: data[:n])
    second = csprng_normal(10, std=2.0, random_bytes=lambda n: data[:n])
    np.testing.assert_array_equal(first, second)
    assert np.all(np.isfinite(csprng_normal(10, std=2.0, random_bytes=lambda n: b"\0" * n)))
    assert not np.array_equal(csprng_normal(10, std=1.0), csprng_normal(10, std=1.0))
    assert csprng_normal(0, std=1.0).shape == (0,)
    with pytest.raises(ValueError, match="non-negative"):
        csprng_normal(3, std=-1.0)
