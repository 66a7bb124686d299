"""Update validation: every update is checked before it touches an accumulator.

An update is a flat little-endian float32 vector of the model's dimension (a model delta
``w_k - w`` by convention, see ``docs/aggregation.md``). A bad update raises ``UpdateRejected``
with a stable code the caller records next to the participation, and a human message.
"""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np

FLOAT32 = np.dtype("<f4")
BLOCK_COORDINATES = 1 << 16  # 256 KiB of float32: one block of work stays in cache


class RejectionCode(StrEnum):
    NON_FINITE = "non_finite"
    WRONG_DTYPE = "wrong_dtype"
    WRONG_SHAPE = "wrong_shape"
    WRONG_LENGTH = "wrong_length"
    NORM_EXCEEDED = "norm_exceeded"
    BAD_WEIGHT = "bad_weight"
    MALFORMED = "malformed"


class UpdateRejected(ValueError):
    """An update (or its weight, or its encoding) failed validation; nothing was folded."""

    def __init__(self, code: RejectionCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def sum_of_squares(values: np.ndarray, *, block_coordinates: int = BLOCK_COORDINATES) -> float:
    """Sum of squares of a float vector (any length, f32 or f64) accumulated in float64.

    Squares go into one cache-sized float64 scratch block and are summed pairwise: no d-sized
    temporary, and no BLAS call (BLAS threads spin and slow everything on a shared two-core
    server).
    """
    length = values.shape[0]
    scratch = np.empty(min(length, block_coordinates), dtype=np.float64)
    total = 0.0
    for start in range(0, length, block_coordinates):
        block = values[start : start + block_coordinates]
        squares = scratch[: block.shape[0]]
        np.multiply(block, block, out=squares, dtype=np.float64)
        total += float(squares.sum())
    return total


def validate_weight(weight: float) -> float:
    """A fold weight (examples, or a staleness-discounted count) must be finite and positive."""
    if isinstance(weight, bool) or not isinstance(weight, int | float | np.integer | np.floating):
        raise UpdateRejected(RejectionCode.BAD_WEIGHT, f"weight must be a number, not {weight!r}")
    value = float(weight)
    if not math.isfinite(value) or value <= 0.0:
        raise UpdateRejected(RejectionCode.BAD_WEIGHT, f"weight must be finite and > 0: {value}")
    return value


def validate_update(update: np.ndarray, *, dimension: int, max_norm: float | None = None) -> float:
    """Check one update f32[dimension]; return its L2 norm or raise ``UpdateRejected``.

    Order of checks: type and dtype, shape, length, finiteness, norm policy.
    """
    if not isinstance(update, np.ndarray):
        raise UpdateRejected(
            RejectionCode.WRONG_DTYPE, f"expected a numpy array, got {type(update).__name__}"
        )
    if update.dtype != FLOAT32:
        raise UpdateRejected(RejectionCode.WRONG_DTYPE, f"expected float32, got {update.dtype}")
    if update.ndim != 1:
        raise UpdateRejected(
            RejectionCode.WRONG_SHAPE, f"expected a flat vector, got shape {update.shape}"
        )
    return check_totals(
        length=update.shape[0],
        dimension=dimension,
        squares=sum_of_squares(update),
        max_norm=max_norm,
    )


def check_totals(*, length: int, dimension: int, squares: float, max_norm: float | None) -> float:
    """The checks on a whole update once its values were counted (length) and their squares
    summed, in one pass or chunk by chunk: length, finiteness, norm policy. Returns the L2 norm
    or raises ``UpdateRejected``."""
    if length != dimension:
        raise UpdateRejected(
            RejectionCode.WRONG_LENGTH, f"expected {dimension} values, got {length}"
        )
    # A NaN or an Inf anywhere makes the float64 sum of squares non-finite, and a finite float32
    # cannot overflow it (max 3.4e38² · 2^31 < 1.8e308): one pass checks both.
    if not math.isfinite(squares):
        raise UpdateRejected(RejectionCode.NON_FINITE, "update contains NaN or Inf")
    norm = math.sqrt(squares)
    if max_norm is not None and norm > max_norm:
        raise UpdateRejected(
            RejectionCode.NORM_EXCEEDED, f"L2 norm {norm:.6g} exceeds the policy bound {max_norm:g}"
        )
    return norm


def check_chunk(
    chunk: bytes | bytearray | memoryview, *, offset: int, dimension: int
) -> np.ndarray:
    """Decode one little-endian float32 chunk of an update starting at ``offset``: f32[len/4].

    The returned array is a read-only view of the chunk (no copy).
    """
    size = len(chunk)
    if size % 4:
        raise UpdateRejected(
            RejectionCode.MALFORMED, f"chunk at value {offset} is {size} bytes, not whole float32s"
        )
    values = np.frombuffer(chunk, dtype=FLOAT32)
    if offset + values.shape[0] > dimension:
        raise UpdateRejected(
            RejectionCode.WRONG_LENGTH,
            f"update is longer than {dimension} values (chunk at value {offset})",
        )
    return values
