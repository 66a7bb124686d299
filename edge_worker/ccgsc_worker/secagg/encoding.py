"""Fixed-point encoding of clipped float updates into Z_2^32, sized so a cohort's sum cannot wrap.

Each client encodes x (|x_j| ≤ bound after clipping) as floor(x_j · scale + u_j) mod 2^32 with
u_j uniform in [0, 1): stochastic rounding, so the encoding is unbiased. The scale is the largest
with n · (scale · bound + 1) ≤ 2^31 − 1, so the sum of n encodings read as a signed 32-bit
integer is exactly the sum of the rounded values.
"""

from __future__ import annotations

import os

import numpy as np

from ccgsc_worker.secagg.primitives import RandomBytes

BITS = 32
_HALF = 2 ** (BITS - 1) - 1


def scale_for(*, n_clients: int, bound: float) -> float:
    """The largest scale at which n clients' values in [−bound, bound] sum without wrapping."""
    if n_clients < 1 or bound <= 0:
        raise ValueError("need at least one client and a positive bound")
    scale = (_HALF / n_clients - 1) / bound
    if scale <= 0:
        raise ValueError(f"{n_clients} clients do not fit in {BITS} bits")
    return scale


def uniforms_from_bytes(data: bytes) -> np.ndarray:
    """Rounding offsets in [0, 1): little-endian uint32 / 2^32. Shape (len/4,), float64."""
    return np.frombuffer(data, dtype="<u4").astype(np.float64) / 2.0**32


def encode(
    values: np.ndarray, *, scale: float, bound: float, random_bytes: RandomBytes = os.urandom
) -> np.ndarray:
    """Clip coordinates to [−bound, bound], scale and round stochastically into Z_2^32.

    values: shape (d,), any float dtype. Returns shape (d,), uint32. The offsets are read from
    random_bytes(4·d) so the browser client, given the same bytes, encodes identically.
    """
    clipped = np.clip(np.asarray(values, dtype=np.float64), -bound, bound)
    offsets = uniforms_from_bytes(random_bytes(4 * clipped.size))
    rounded = np.floor(clipped * scale + offsets).astype(np.int64)
    return (rounded & 0xFFFFFFFF).astype(np.uint32)


def decode_sum(total: np.ndarray, *, scale: float) -> np.ndarray:
    """The float sum from a Z_2^32 sum of encodings. total: (d,) uint32 → (d,) float64."""
    return np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.float64) / scale
