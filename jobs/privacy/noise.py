"""Gaussian noise for DP-FedAvg: central (the server noises the sum) or distributed (each client
adds an integer share under secure aggregation, sized so that the survivors' shares add up to
at least the target noise).

Simulations and tests pass a numpy Generator; the rounds draw their central noise with
``csprng_normal`` (the operating system's CSPRNG, no seed anywhere). Floating-point Gaussian
sampling has known precision side channels (Mironov 2012); the distributed integer mechanisms
avoid them on the client side.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

# The edge worker adds its share without numpy; the variance rule has one home, its package.
from ccgsc_worker.dp import per_client_variance

RandomBytes = Callable[[int], bytes]
_UNIT = 2.0**-53

__all__ = [
    "add_central_gaussian",
    "add_noise_to_encoded",
    "csprng_normal",
    "discrete_gaussian_share",
    "per_client_variance",
    "skellam_share",
]


def _generator(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


def csprng_normal(size: int, *, std: float, random_bytes: RandomBytes = os.urandom) -> np.ndarray:
    """N(0, std²) noise, (size,) float64, from a cryptographic source of bytes (os.urandom).

    Box–Muller on 53-bit uniforms read from the CSPRNG: there is no seed to store or leak, and
    an observer of earlier draws cannot predict later ones (numpy's PCG64 is not a CSPRNG).
    """
    if size < 0 or std < 0:
        raise ValueError("size and std must be non-negative")
    pairs = (size + 1) // 2
    words = np.frombuffer(random_bytes(16 * pairs), dtype="<u8").reshape(pairs, 2) >> np.uint64(11)
    first = (words[:, 0].astype(np.float64) + 1.0) * _UNIT  # (0, 1]: the log is finite
    second = words[:, 1].astype(np.float64) * _UNIT  # [0, 1)
    radius = np.sqrt(-2.0 * np.log(first))
    angle = 2.0 * math.pi * second
    normal = np.empty(2 * pairs, dtype=np.float64)
    normal[0::2] = radius * np.cos(angle)
    normal[1::2] = radius * np.sin(angle)
    return normal[:size] * std


def add_central_gaussian(
    total: np.ndarray,
    *,
    noise_multiplier: float,
    clip_norm: float,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """total + N(0, (z·C)²) per coordinate. total: (d,) float. Returns a new float64 array."""
    std = noise_multiplier * clip_norm
    values = np.asarray(total, dtype=np.float64)
    return values + _generator(rng).normal(0.0, std, values.shape)


def skellam_share(
    dimension: int, *, variance: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Symmetric Skellam noise, Poisson(μ) − Poisson(μ) with 2μ = variance: (d,) int64.

    Sums of Skellam shares are Skellam, so the aggregate noise has a known closed form
    (Agarwal, Kairouz, Liu 2021).
    """
    generator = _generator(rng)
    mu = variance / 2
    return generator.poisson(mu, dimension) - generator.poisson(mu, dimension)


def discrete_gaussian_share(
    dimension: int, *, variance: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Discrete Gaussian N_Z(0, σ²) with σ² = variance: (d,) int64.

    Canonne, Kamath and Steinke (2020), Algorithm 3, vectorised: propose from a discrete
    Laplace with t = ⌊σ⌋ + 1 and accept with probability exp(−(|y| − σ²/t)² / (2σ²)),
    redrawing only the rejected coordinates.
    """
    generator = _generator(rng)
    sigma2 = float(variance)
    t = math.floor(math.sqrt(sigma2)) + 1
    out = np.empty(dimension, dtype=np.int64)
    pending = np.arange(dimension)
    while pending.size:
        m = pending.size
        # A discrete Laplace with scale t is the difference of two geometric variables.
        p = 1 - math.exp(-1 / t)
        y = generator.geometric(p, m) - generator.geometric(p, m)
        accept = generator.random(m) < np.exp(-((np.abs(y) - sigma2 / t) ** 2) / (2 * sigma2))
        out[pending[accept]] = y[accept]
        pending = pending[~accept]
    return out


def add_noise_to_encoded(encoded: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """encoded (uint32, Z_2^32) + integer noise, wrapping: a new (d,) uint32 array."""
    return (np.asarray(encoded, dtype=np.uint32) + (noise & 0xFFFFFFFF).astype(np.uint32)).astype(
        np.uint32
    )
