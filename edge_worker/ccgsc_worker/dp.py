"""The client's side of differential privacy in FL rounds: clipping the update the invite asks
for, and the distributed-noise share a client adds under secure aggregation (docs/security.md).

- ``clip_update``: the invite's ``hyperparameters.dp.clip_norm`` C → the update scaled to L2 norm
  at most C. The server clips again (it cannot trust a client to); clipping here keeps an honest
  client's upload as the server will use it.
- ``noise_share`` / ``add_share``: for ``dp_mode = distributed`` the invite's ``secagg.noise``
  block gives the mechanism (``skellam``) and the variance v = (z·C·scale)² / m of one client's
  share, m the fewest accounted survivors the round accepts; the secure-aggregation client
  (``secagg.wire.WireClient.mask_update``) draws the share and adds it to the encoded update in
  Z_2^32 before masking, so the survivors' shares add up to at least the target noise.
  Randomness is the operating system's CSPRNG (``os.urandom``); the sampler is ``skellam``.
"""

from __future__ import annotations

import array
import math
import os

import numpy as np

from ccgsc_worker.skellam import RandomBytes, skellam_share

# The one distributed mechanism (docs/security.md says why Skellam).
MECHANISM = "skellam"


def clip_update(update: bytes, clip_norm: float) -> tuple[bytes, float, bool]:
    """(update f32[d] scaled to L2 norm ≤ clip_norm, its norm, whether it was within already).

    ``update`` is little-endian float32 bytes (the kernel's output); the norm is summed exactly
    (``math.fsum``) in float64. An update already within C comes back unchanged.
    """
    if not clip_norm > 0:
        raise ValueError("clip_norm must be positive")
    values = array.array("f")
    values.frombytes(update)
    norm = math.sqrt(math.fsum(v * v for v in values))
    if norm <= clip_norm:
        return update, norm, True
    scale = clip_norm / norm
    clipped = array.array("f", (v * scale for v in values))
    return clipped.tobytes(), math.sqrt(math.fsum(v * v for v in clipped)), False


def per_client_variance(
    *, noise_multiplier: float, clip_norm: float, scale: float, min_survivors: int
) -> float:
    """Variance (in encoded integer units) of one client's share: (z·C·scale)² / m_min.

    With m_min survivors the shares sum to exactly the central mechanism's variance; every
    extra survivor adds noise, never removes it. Count only accounted survivors in m_min when
    anonymous ones may withhold their shares (the protected-cohort rule).
    """
    if min_survivors < 1:
        raise ValueError("min_survivors must be at least 1")
    return (noise_multiplier * clip_norm * scale) ** 2 / min_survivors


def noise_share(
    dimension: int,
    *,
    mechanism: str,
    variance: float,
    random_bytes: RandomBytes = os.urandom,
) -> np.ndarray:
    """One client's distributed-noise share: (dimension,) int64 of the invite's mechanism."""
    if mechanism != MECHANISM:
        raise ValueError(f"unknown noise mechanism {mechanism!r}")
    return skellam_share(dimension, variance=variance, random_bytes=random_bytes)


def add_share(encoded: np.ndarray, share: np.ndarray) -> np.ndarray:
    """encoded (Z_2^32, uint32) + the integer share, wrapping: a new (d,) uint32 array."""
    if np.shape(encoded) != np.shape(share):
        raise ValueError("the share must have the encoded update's shape")
    wrapped = (np.asarray(share, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32)
    return np.asarray(encoded, dtype=np.uint32) + wrapped
