"""L2 clipping of client updates: fixed, and adaptive after Andrew et al. 2021.

Adaptive clipping tracks a quantile γ of the clients' update norms: each client also reports
the bit "my norm was at most C" as one extra coordinate of the (secure) sum, the server adds
its own Gaussian noise to that count, and moves C geometrically toward the quantile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def clip_l2(update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
    """(update scaled to L2 norm ≤ clip_norm, whether it was within the bound already).

    update: shape (d,), float. Returns a new float64 array; the input is not modified.
    """
    if clip_norm <= 0:
        raise ValueError("clip_norm must be positive")
    values = np.asarray(update, dtype=np.float64)
    norm = float(np.linalg.norm(values))
    if norm <= clip_norm:
        return values.copy(), True
    return values * (clip_norm / norm), False


def with_clip_bit(clipped: np.ndarray, within_bound: bool) -> np.ndarray:
    """The clipped update with the adaptive-clipping bit appended: shape (d + 1,), float64."""
    return np.append(np.asarray(clipped, dtype=np.float64), 1.0 if within_bound else 0.0)


def adaptive_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """The noise multiplier for the update sum when the count takes part of the budget.

    Andrew et al. (2021, §3.1): z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) keeps the pair of releases at the
    privacy of one Gaussian release with multiplier z; it needs 2σ_b > z.
    """
    remaining = noise_multiplier**-2 - (2 * count_noise_std) ** -2
    if remaining <= 0:
        raise ValueError("count noise too small for this noise multiplier: need 2σ_b > z")
    return remaining**-0.5


@dataclass(frozen=True)
class AdaptiveClip:
    """Geometric clip-norm update toward the target quantile of update norms.

    clip_norm: current C; target_quantile: γ; learning_rate: η_C; count_noise_std: σ_b, the
    standard deviation of the Gaussian noise on the within-bound count.
    """

    clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float = 0.0

    def noisy_fraction(
        self, within_count: float, n_clients: int, rng: np.random.Generator
    ) -> float:
        """b̃: the noised fraction of clients whose norm was within C."""
        noise = rng.normal(0.0, self.count_noise_std) if self.count_noise_std else 0.0
        return (within_count + noise) / n_clients

    def updated(self, noisy_fraction: float) -> AdaptiveClip:
        """The next round's clip: C · exp(−η (b̃ − γ))."""
        factor = math.exp(-self.learning_rate * (noisy_fraction - self.target_quantile))
        return AdaptiveClip(
            clip_norm=self.clip_norm * factor,
            target_quantile=self.target_quantile,
            learning_rate=self.learning_rate,
            count_noise_std=self.count_noise_std,
        )
