"""The client's side of differential privacy in FL rounds, in pure Python (the edge worker does
not depend on numpy): clipping the update the invite asks for, and the distributed-noise share a
client adds under secure aggregation (docs/security.md).

- ``clip_update``: the invite's ``hyperparameters.dp.clip_norm`` C → the update scaled to L2 norm
  at most C. The server clips again (it cannot trust a client to); clipping here keeps an honest
  client's upload as the server will use it.
- ``noise_share`` / ``add_share``: for ``dp_mode = distributed``, each client adds an integer
  discrete-Gaussian share of variance (z·C·scale)² / m_min to its encoded update before masking,
  so that the survivors' shares add up to at least the central mechanism's noise. Randomness is
  the operating system's CSPRNG (``secrets.SystemRandom``).

Wiring point: the secure-aggregation client calls ``noise_share`` then ``add_share`` between
encoding the clipped update into Z_2^32 and adding its masks; until secure aggregation runs in
the rounds, an invite asks only for clipping.
"""

from __future__ import annotations

import array
import math
import random
import secrets
from collections.abc import Iterable, Sequence

_MODULUS = 1 << 32


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


def _geometric(rng: random.Random, p: float) -> int:
    """Failures before the first success, P(k) = (1 − p)^k p (inverse transform)."""
    u = 1.0 - rng.random()  # (0, 1]
    return math.floor(math.log(u) / math.log1p(-p))


def noise_share(dimension: int, *, variance: float, rng: random.Random | None = None) -> list[int]:
    """Discrete Gaussian N_Z(0, σ²), σ² = variance, per coordinate: d integers.

    Canonne, Kamath and Steinke (2020), Algorithm 3, as ``jobs.privacy.noise`` does it with
    numpy: propose from a discrete Laplace with t = ⌊σ⌋ + 1 (the difference of two geometric
    variables) and accept with probability exp(−(|y| − σ²/t)² / (2σ²)).
    """
    if dimension < 0 or variance <= 0:
        raise ValueError("dimension must be non-negative and variance positive")
    generator = rng if rng is not None else secrets.SystemRandom()
    t = math.floor(math.sqrt(variance)) + 1
    p = 1 - math.exp(-1 / t)
    out = []
    while len(out) < dimension:
        y = _geometric(generator, p) - _geometric(generator, p)
        if generator.random() < math.exp(-((abs(y) - variance / t) ** 2) / (2 * variance)):
            out.append(y)
    return out


def add_share(encoded: Sequence[int], share: Iterable[int]) -> array.array:
    """encoded (Z_2^32, uint32) + the integer share, wrapping: a new uint32 array."""
    return array.array(
        "I", ((value + noise) % _MODULUS for value, noise in zip(encoded, share, strict=True))
    )
