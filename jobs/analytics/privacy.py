"""Differential privacy for a federated analytics query: sensitivity, noise, calibration.

One contributor uses at most ``max_rows`` rows m, each clipped to [lo, hi] and shifted by lo,
so adding or removing that contributor moves each block of a column's vector by at most (L2):
count m, Σ t m·w, Σ t² m·w², histogram m (w = hi − lo; a histogram of m rows has L2 norm ≤ m).
The K = 4·columns blocks are scaled so each has sensitivity 1/√K; the whole vector then has L2
sensitivity 1 and one Gaussian release with noise multiplier z is exactly the mechanism the
platform's accountant charges a DP round for (σ of block b = z·Δ_b·√K in the block's units).
"""

from __future__ import annotations

import math

import numpy as np

from jobs.analytics.spec import QuerySpec
from jobs.privacy.accounting import VOLUNTEER_SAMPLING_PROBABILITY, Accountant, epsilon_spent

BLOCKS_PER_COLUMN = 4
MIN_NOISE_MULTIPLIER = 0.05
MAX_NOISE_MULTIPLIER = 100.0


def block_sensitivities(spec: QuerySpec) -> list[tuple[float, float, float, float]]:
    """Per column, the L2 sensitivity of its count, Σ t, Σ t² and histogram blocks."""
    m = float(spec.max_rows)
    return [(m, m * c.width, m * c.width * c.width, m) for c in spec.columns]


def block_noise_std(spec: QuerySpec, *, noise_multiplier: float) -> np.ndarray:
    """σ of the Gaussian noise on each coordinate of the vector: f64[d] (the layout of
    ``QuerySpec``: count, Σ t, Σ t², then the bins)."""
    scale = noise_multiplier * math.sqrt(BLOCKS_PER_COLUMN * len(spec.columns))
    parts = []
    for column, (count, total, squares, histogram) in zip(
        spec.columns, block_sensitivities(spec), strict=True
    ):
        head = np.array([count, total, squares], dtype=np.float64) * scale
        parts.extend([head, np.full(column.bins, histogram * scale)])
    return np.concatenate(parts)


def add_query_noise(
    total: np.ndarray,
    spec: QuerySpec,
    *,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """total (f64[d]) + N(0, σ²) per coordinate with ``block_noise_std``; a new f64 array.
    Seed ``rng`` from the operating system (the default) outside tests."""
    generator = rng if rng is not None else np.random.default_rng()
    std = block_noise_std(spec, noise_multiplier=noise_multiplier)
    return np.asarray(total, dtype=np.float64) + generator.normal(0.0, 1.0, std.size) * std


def noise_multiplier_for_budget(
    *, epsilon: float, delta: float, rounds: int, accountant: Accountant = "rdp"
) -> float:
    """The smallest z (to 3 significant digits, rounded up) whose ``rounds`` releases at
    q = 1 stay within (ε, δ); raises ValueError when even z = 100 does not."""

    def fits(z: float) -> bool:
        spent = epsilon_spent(
            noise_multiplier=z,
            sampling_probability=VOLUNTEER_SAMPLING_PROBABILITY,
            rounds=rounds,
            delta=delta,
            accountant=accountant,
        )
        return spent <= epsilon

    if not fits(MAX_NOISE_MULTIPLIER):
        raise ValueError(f"ε = {epsilon:g} is too small for {rounds} rounds at δ = {delta:g}")
    low, high = MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER
    if fits(low):
        return low
    while high / low > 1.001:
        middle = math.sqrt(low * high)
        if fits(middle):
            high = middle
        else:
            low = middle
    digits = 2 - math.floor(math.log10(high))
    rounded = math.ceil(high * 10**digits) / 10**digits
    return rounded if fits(rounded) else high
