"""The numpy reference of the analytics kernel (ABI v3): the same bytes, computed here.

Sums run in float64 in row order (``np.cumsum`` is sequential; ``np.sum`` is pairwise and would
round differently) and are rounded to float32 once, exactly as the kernel does.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from jobs.analytics.spec import QuerySpec

METRICS = struct.Struct("<IIdII d")  # the kernel's 32-byte metrics header (ABI v2 layout)


def _sequential_sum(values: np.ndarray) -> float:
    return float(np.cumsum(values)[-1]) if values.size else 0.0


def summarize(x: np.ndarray, spec: QuerySpec) -> np.ndarray:
    """The summary vector of rows ``x`` (f32[n, f]) under ``spec``: f32[d]."""
    rows = np.asarray(x, dtype=np.float32)[: spec.max_rows]
    parts: list[np.ndarray] = []
    for column in spec.columns:
        values = rows[:, column.feature]
        values = values[np.isfinite(values)]
        lo, hi = np.float32(column.lo), np.float32(column.hi)
        t = np.clip(values, lo, hi).astype(np.float64) - np.float64(lo)
        width = np.float64(hi) - np.float64(lo)
        index = np.minimum((t / width * float(column.bins)).astype(np.int64), column.bins - 1)
        counts = np.bincount(index, minlength=column.bins)
        head = [float(t.size), _sequential_sum(t), _sequential_sum(t * t)]
        parts.append(np.concatenate([np.array(head), counts.astype(np.float64)]))
    return np.concatenate(parts).astype(np.float32)


def summarize_body(x: np.ndarray, spec: QuerySpec) -> bytes:
    """The kernel's whole output for ``x``: the metrics header, then the vector's bytes."""
    vector = summarize(x, spec)
    rows = min(len(x), spec.max_rows)
    wide = vector.astype(np.float64)
    norm = math.sqrt(_sequential_sum(wide * wide))
    header = METRICS.pack(0, rows, 0.0, 0, vector.size, norm)
    return header + vector.astype("<f4").tobytes()
