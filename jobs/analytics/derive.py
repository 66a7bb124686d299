"""Statistics from a query's summed vector: counts, sums, means, variances, histograms and
quantiles interpolated from the histogram's CDF.

Works on the exact sum (secure aggregation without noise) and on a noised one (differential
privacy): noisy histogram counts are clipped at zero before the CDF is built, and a count at or
below zero leaves the mean and variance undefined (None) rather than dividing by noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jobs.analytics.spec import BLOCKS_BEFORE_BINS, Column, QuerySpec

DEFAULT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True, slots=True)
class ColumnStatistics:
    """What the aggregate says about one column (values in the column's own units)."""

    name: str
    count: float
    sum: float
    mean: float | None
    variance: float | None  # population variance of the clipped values
    histogram: list[float]  # counts per bin (noisy ones clipped at 0)
    edges: list[float]  # bins + 1 edges from lo to hi
    quantiles: dict[str, float | None]

    def as_dict(self) -> dict[str, object]:
        std = None if self.variance is None else float(np.sqrt(self.variance))
        return {
            "name": self.name,
            "count": self.count,
            "sum": self.sum,
            "mean": self.mean,
            "variance": self.variance,
            "std": std,
            "histogram": self.histogram,
            "edges": self.edges,
            "quantiles": self.quantiles,
        }


def histogram_quantile(counts: np.ndarray, *, lo: float, hi: float, q: float) -> float | None:
    """The q-quantile (0 ≤ q ≤ 1) of values binned in equal-width ``counts`` (f64[b]) over
    [lo, hi]: the CDF is interpolated linearly inside the bin where it reaches q·N. None when
    the histogram is empty. Within one bin width of the data's own quantile."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be in [0, 1]")
    counts = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    total = float(counts.sum())
    if total <= 0.0:
        return None
    width = (hi - lo) / counts.size
    target = q * total
    below = 0.0
    for index, count in enumerate(counts):
        if count > 0.0 and below + count >= target:
            return lo + width * (index + (target - below) / count)
        below += count
    return hi


def _column_statistics(
    column: Column, values: np.ndarray, quantiles: Sequence[float]
) -> ColumnStatistics:
    count, shifted_sum, shifted_squares = (float(v) for v in values[:BLOCKS_BEFORE_BINS])
    bins = np.clip(values[BLOCKS_BEFORE_BINS:], 0.0, None)
    mean = variance = None
    if count > 0.0:
        shifted_mean = shifted_sum / count
        mean = column.lo + shifted_mean
        variance = max(0.0, shifted_squares / count - shifted_mean * shifted_mean)
    edges = [column.lo + column.width * k / column.bins for k in range(column.bins)] + [column.hi]
    return ColumnStatistics(
        name=column.name,
        count=count,
        sum=shifted_sum + count * column.lo,
        mean=mean,
        variance=variance,
        histogram=[float(v) for v in bins],
        edges=edges,
        quantiles={
            f"{q:g}": histogram_quantile(bins, lo=column.lo, hi=column.hi, q=q) for q in quantiles
        },
    )


def derive_statistics(
    total: np.ndarray, spec: QuerySpec, *, quantiles: Sequence[float] = DEFAULT_QUANTILES
) -> list[ColumnStatistics]:
    """Per column statistics from the summed vector ``total`` (f64[d] or f32[d])."""
    values = np.asarray(total, dtype=np.float64)
    if values.shape != (spec.dimension,):
        raise ValueError(f"expected a vector of {spec.dimension} values, got {values.shape}")
    return [
        _column_statistics(column, values[start : start + column.length], quantiles)
        for column, start in zip(spec.columns, spec.offsets(), strict=True)
    ]
