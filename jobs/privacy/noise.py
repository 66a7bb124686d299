"""Gaussian noise for DP-FedAvg: central (the server noises the sum) or distributed (each client
adds an integer share under secure aggregation, sized so that the survivors' shares add up to
at least the target noise).

Simulations and tests pass a numpy Generator; the rounds draw their central noise with
``csprng_normal`` (the operating system's CSPRNG, no seed anywhere). Floating-point Gaussian
sampling has known precision side channels (Mironov 2012); the distributed integer mechanism
(Skellam, ``skellam_share``, drawn from bytes of the CSPRNG) avoids them on the client side.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

# The clients' share sampler and its variance rule have one home, the edge worker's package.
from ccgsc_worker.dp import add_share, per_client_variance
from ccgsc_worker.skellam import skellam_share

RandomBytes = Callable[[int], bytes]
_UNIT = 2.0**-53

__all__ = [
    "add_central_gaussian",
    "add_noise_to_encoded",
    "csprng_normal",
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


add_noise_to_encoded = add_share  # one implementation, the clients' own
