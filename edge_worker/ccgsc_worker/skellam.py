"""Symmetric Skellam noise from a byte source: the distributed-DP share each client adds to its
encoded update under secure aggregation (docs/security.md, "Distributed mode").

Sk(σ²) = Poisson(σ²/2) − Poisson(σ²/2): integer, mean 0, variance σ². Sums of independent
Skellam variables are Skellam (the means add), so m clients' shares of variance σ²/m add up to
exactly Sk(σ²), the distribution the accountant (``jobs.privacy.skellam``) bounds.

Every draw is a function of the bytes read from ``random_bytes``: the operating system's CSPRNG
(``os.urandom``) in production, a seeded byte stream only in tests. The browser's twin
(``static/worker_frontend/dp-noise.js``) reads the same bytes in the same order and computes the
same numbers, so the two clients draw one mechanism (``tests/secagg/test_js_parity.py``).

Poisson sampling, vectorised over the coordinates still pending:
- mean < 10: inversion on the cumulative table, one uniform per draw;
- mean ≥ 10: Hörmann's PTRS (transformed rejection with squeeze, 1993), two uniforms per
  attempt, accepted about 9 times in 10; the log-pmf in the saddle-point form
  λ·(x − (1+x)·log1p(x)) − ½·log(2πk) − stirlerr(k), x = (k − λ)/λ, which keeps its precision
  at the means the shares use (10⁸ and more), where −λ + k·log λ − log k! loses it to
  cancellation. Rejected coordinates are redrawn in the next pass, in index order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

RandomBytes = Callable[[int], bytes]

SMALL_MEAN = 10.0
_TABLE_STOP = 16  # below this k the log-pmf uses log k! from the table
# log k! summed term by term, as the browser's twin builds it (the same float64 operations)
_LOG_FACTORIAL = np.cumsum([0.0, 0.0, *(math.log(k) for k in range(2, _TABLE_STOP))])
_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def uniforms(count: int, random_bytes: RandomBytes) -> np.ndarray:
    """(count,) float64 in [0, 1), 53 bits each: the top bits of little-endian u64 words."""
    words = np.frombuffer(random_bytes(8 * count), dtype="<u8")
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _stirling_error(k: np.ndarray) -> np.ndarray:
    """log k! − ((k + ½)·log k − k + ½·log 2π) for k ≥ 16 (its asymptotic series)."""
    inverse = 1.0 / k
    square = inverse * inverse
    return inverse * (1 / 12 - square * (1 / 360 - square * (1 / 1260 - square / 1680)))


def _log_pmf(k: np.ndarray, mean: float) -> np.ndarray:
    """log P(Poisson(mean) = k) for integer-valued k ≥ 0 (float64)."""
    small = k < _TABLE_STOP
    out = np.empty_like(k)
    ks = k[small]
    out[small] = -mean + ks * math.log(mean) - _LOG_FACTORIAL[ks.astype(np.int64)]
    kl = k[~small]
    x = (kl - mean) / mean
    out[~small] = (
        mean * (x - (1 + x) * np.log1p(x))
        - _HALF_LOG_TWO_PI
        - 0.5 * np.log(kl)
        - _stirling_error(kl)
    )
    return out


def _poisson_small(mean: float, size: int, random_bytes: RandomBytes) -> np.ndarray:
    stop = int(mean + 40 * math.sqrt(mean) + 40)
    ks = np.arange(stop, dtype=np.float64)
    cdf = np.cumsum(np.exp(_log_pmf(ks, mean)))
    return np.searchsorted(cdf, uniforms(size, random_bytes), side="right").astype(np.int64)


def poisson(mean: float, size: int, *, random_bytes: RandomBytes = os.urandom) -> np.ndarray:
    """(size,) int64 Poisson(mean) draws; mean ≥ 0, exact up to float64 rounding."""
    if size < 0 or not mean >= 0 or not math.isfinite(mean):
        raise ValueError("size must be non-negative and the mean finite and non-negative")
    if mean == 0 or size == 0:
        return np.zeros(size, dtype=np.int64)
    if mean < SMALL_MEAN:
        return _poisson_small(mean, size, random_bytes)
    root = math.sqrt(mean)
    b = 0.931 + 2.53 * root
    a = -0.059 + 0.02483 * b
    log_inverse_alpha = math.log(1.1239 + 1.1328 / (b - 3.4))
    v_r = 0.9277 - 3.6224 / (b - 2)
    out = np.empty(size, dtype=np.int64)
    pending = np.arange(size)
    while pending.size:
        drawn = uniforms(2 * pending.size, random_bytes)
        u, v = drawn[0::2] - 0.5, drawn[1::2]
        us = 0.5 - np.abs(u)
        k = np.floor((2 * a / us + b) * u + mean + 0.43)
        accept = (us >= 0.07) & (v <= v_r)
        slow = ~accept & (k >= 0) & ~((us < 0.013) & (v > us))
        if slow.any():
            ks, vs, uss = k[slow], v[slow], us[slow]
            lhs = np.log(vs) + log_inverse_alpha - np.log(a / (uss * uss) + b)
            accept[slow] = lhs <= _log_pmf(ks, mean)
        out[pending[accept]] = k[accept].astype(np.int64)
        pending = pending[~accept]
    return out


def skellam_share(
    dimension: int, *, variance: float, random_bytes: RandomBytes = os.urandom
) -> np.ndarray:
    """(dimension,) int64 symmetric Skellam noise of the given variance per coordinate.

    The first Poisson vector is drawn completely, then the second (the browser does the same)."""
    if dimension < 0 or not variance > 0 or not math.isfinite(variance):
        raise ValueError("dimension must be non-negative and the variance positive")
    positive = poisson(variance / 2, dimension, random_bytes=random_bytes)
    return positive - poisson(variance / 2, dimension, random_bytes=random_bytes)
