"""ABI v3: the analytics kernel's input and output (docs/kernel-abi.md, "ABI version 3").

input  = 32-byte header (op, rows n, features f, columns c, max rows m, three zero words)
         | c column specs (u32 feature, u32 bins, f32 lo, f32 hi) | X f32[n·f] row-major
output = 32-byte metrics (status, rows used, 0.0, 0, d, L2 norm: the v2 metrics layout, so the
         output is an FL upload body as it stands) | f32[d]

Per column the vector holds [count, Σ t, Σ t², bins...] with t = clip(x, lo, hi) − lo over the
finite values of the first min(n, m) rows (m = 0: every row).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

OP_SUMMARIZE = 1
HEADER = struct.Struct("<IIIIIIII")
COLUMN = struct.Struct("<IIff")
METRICS = struct.Struct("<IIdII d")
MAX_COLUMNS = 256
MAX_BINS = 1024
MAX_ROWS = 1 << 24
BLOCKS_BEFORE_BINS = 3  # count, sum, sum of squares


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One requested column: the feature index in a row, its bins and bounds (lo < hi)."""

    feature: int
    bins: int
    lo: float
    hi: float


@dataclass(frozen=True, slots=True)
class Summary:
    """A decoded kernel output: rows used, the vector's length and L2 norm, the whole body."""

    status: int
    rows: int
    dimension: int
    norm: float
    body: bytes  # metrics header + f32[d], the upload body

    @property
    def vector(self) -> bytes:
        return self.body[METRICS.size :]


def vector_length(columns: Sequence[ColumnSpec]) -> int:
    """d = Σ (3 + bins) over the columns."""
    return sum(BLOCKS_BEFORE_BINS + column.bins for column in columns)


def encode_input(
    columns: Sequence[ColumnSpec], x: bytes | memoryview, *, rows: int, features: int, max_rows: int
) -> bytes:
    """The kernel input for ``rows`` × ``features`` little-endian f32 values ``x``."""
    if not 1 <= len(columns) <= MAX_COLUMNS:
        raise ValueError(f"1 to {MAX_COLUMNS} columns, got {len(columns)}")
    if not 0 <= rows <= MAX_ROWS or features < 1 or max_rows < 0:
        raise ValueError("rows, features or max_rows out of range")
    raw = memoryview(x).cast("B")
    if raw.nbytes != 4 * rows * features:
        raise ValueError(f"x has {raw.nbytes} bytes, expected {4 * rows * features}")
    parts = [HEADER.pack(OP_SUMMARIZE, rows, features, len(columns), max_rows, 0, 0, 0)]
    for column in columns:
        if not 0 <= column.feature < features or not 1 <= column.bins <= MAX_BINS:
            raise ValueError(f"bad column {column}")
        parts.append(COLUMN.pack(column.feature, column.bins, column.lo, column.hi))
    parts.append(raw.tobytes())
    return b"".join(parts)


def decode_output(data: bytes, *, columns: Sequence[ColumnSpec]) -> Summary:
    """Check the output's length against the columns and split it."""
    d = vector_length(columns)
    if len(data) != METRICS.size + 4 * d:
        raise ValueError(f"output is {len(data)} bytes, expected {METRICS.size + 4 * d}")
    status, rows, _zero, _correct, dimension, norm = METRICS.unpack_from(data)
    if dimension != d:
        raise ValueError(f"output declares d = {dimension}, expected {d}")
    return Summary(status, rows, dimension, norm, bytes(data))
