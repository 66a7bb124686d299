"""A federated analytics query: the columns, their bounds and bins, and the vector layout.

Per column the summary vector holds, in order: the count of finite values, Σ t, Σ t² and the
count in each of ``bins`` equal-width bins, where t = clip(x, lo, hi) − lo ∈ [0, hi − lo].
Shifting by lo keeps a row's contribution to the sums within [0, hi − lo] (and its square within
[0, (hi − lo)²]) whatever the column's offset: that is the sensitivity differential privacy
is sized for, and the range secure aggregation's fixed-point encoding must hold.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCKS_BEFORE_BINS = 3  # count, Σ t, Σ t²
MAX_COLUMNS = 256
MAX_BINS = 1024
MAX_ROWS = 1 << 24  # counts stay exact in the kernel's float32 output
# What a query may ask for; every column's vector carries all of its blocks regardless (the
# statistics only choose what is derived and shown).
STATISTICS = ("count", "sum", "mean", "variance", "histogram", "quantiles")


@dataclass(frozen=True, slots=True)
class Column:
    """A requested numeric column: its name, its index in a row, its bounds and bins."""

    name: str
    feature: int
    lo: float
    hi: float
    bins: int

    @property
    def width(self) -> float:
        return self.hi - self.lo

    @property
    def length(self) -> int:
        """Entries of this column in the summary vector."""
        return BLOCKS_BEFORE_BINS + self.bins


@dataclass(frozen=True, slots=True)
class QuerySpec:
    """The columns of a query (in vector order) and the rows each contributor may use
    (``max_rows`` ≥ 1: the first rows of its data; the sensitivity scales with it)."""

    columns: tuple[Column, ...]
    max_rows: int

    def __post_init__(self) -> None:
        if not 1 <= len(self.columns) <= MAX_COLUMNS:
            raise ValueError(f"a query has 1 to {MAX_COLUMNS} columns")
        if not 1 <= self.max_rows <= MAX_ROWS:
            raise ValueError(f"max_rows must be 1 to {MAX_ROWS}")
        for column in self.columns:
            if not column.lo < column.hi or not 1 <= column.bins <= MAX_BINS:
                raise ValueError(f"column {column.name!r}: need lo < hi and 1 to {MAX_BINS} bins")

    @property
    def dimension(self) -> int:
        """d, the summary vector's length."""
        return sum(column.length for column in self.columns)

    def offsets(self) -> list[int]:
        """Where each column's entries start in the vector."""
        starts, at = [], 0
        for column in self.columns:
            starts.append(at)
            at += column.length
        return starts
