"""Robust aggregation over all of a round's updates, in bounded memory.

These rules need every update at once, so updates are spilled to one file (``UpdateSpill``, an
(n, d) float32 memmap) and every function here reads an (n, d) array — in memory or memmapped —
a block of coordinates at a time: memory is O(n · block), never O(n · d), with the block sized
so one (n, block) float32 slice is at most 8 MiB (``block_for``). Krum's pairwise distances are
summed block by block in float64.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from jobs.aggregation.validation import (
    BLOCK_COORDINATES,
    FLOAT32,
    RejectionCode,
    UpdateRejected,
    check_chunk,
    check_totals,
    sum_of_squares,
    validate_update,
    validate_weight,
)


class UpdateSpill:
    """Up to ``capacity`` updates f32[d] stored as rows of an .npy file, plus a JSON sidecar.

    ``append`` and ``append_chunks`` validate before writing; ``flush`` makes the rows and the
    sidecar (ids, weights) durable so ``UpdateSpill.open`` resumes after a restart. Appends are
    idempotent per update id.
    """

    def __init__(self, path: str | os.PathLike[str], *, dimension: int, capacity: int) -> None:
        self.path = Path(path)
        self.dimension = dimension
        self.capacity = capacity
        self._rows = np.lib.format.open_memmap(
            self.path, mode="w+", dtype=FLOAT32, shape=(capacity, dimension)
        )
        self.ids: list[str] = []
        self.weights: list[float] = []
        self.flush()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> UpdateSpill:
        """Reopen a flushed spill (rows beyond the sidecar's count are ignored)."""
        spill = cls.__new__(cls)
        spill.path = Path(path)
        spill._rows = np.load(spill.path, mmap_mode="r+")
        spill.capacity, spill.dimension = spill._rows.shape
        sidecar = json.loads(spill._sidecar().read_text())
        spill.ids, spill.weights = sidecar["ids"], sidecar["weights"]
        return spill

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def updates(self) -> np.ndarray:
        """The stored updates, (n, d) float32, memmapped (read-only view)."""
        view = self._rows[: len(self.ids)].view()
        view.flags.writeable = False
        return view

    def append(
        self, update_id: str, update: np.ndarray, weight: float, *, max_norm: float | None = None
    ) -> bool:
        """Store one validated update f32[d]; False if the id is already stored."""
        if update_id in self.ids:
            return False
        weight = validate_weight(weight)
        validate_update(update, dimension=self.dimension, max_norm=max_norm)
        self._reserve()
        self._rows[len(self.ids)] = update
        self._record(update_id, weight)
        return True

    def append_chunks(
        self,
        update_id: str,
        chunks: Iterable[bytes],
        weight: float,
        *,
        max_norm: float | None = None,
    ) -> bool:
        """Store an update arriving as little-endian float32 chunks (one pass, one chunk held).

        Chunks are written into the next free row as they come; the row only counts once the
        whole update has passed validation, so a rejected update leaves no trace.
        """
        if update_id in self.ids:
            return False
        weight = validate_weight(weight)
        self._reserve()
        row = self._rows[len(self.ids)]
        offset = 0
        squares = 0.0
        for chunk in chunks:
            values = check_chunk(chunk, offset=offset, dimension=self.dimension)
            row[offset : offset + values.shape[0]] = values
            squares += sum_of_squares(values)
            offset += values.shape[0]
        check_totals(length=offset, dimension=self.dimension, squares=squares, max_norm=max_norm)
        self._record(update_id, weight)
        return True

    def flush(self) -> None:
        """Write rows to disk, then the sidecar atomically (rename): the sidecar never
        names a row that is not on disk."""
        self._rows.flush()
        sidecar = self._sidecar()
        temporary = sidecar.with_suffix(".tmp")
        temporary.write_text(json.dumps({"ids": self.ids, "weights": self.weights}))
        temporary.replace(sidecar)

    def _sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    def _reserve(self) -> None:
        if len(self.ids) >= self.capacity:
            raise UpdateRejected(RejectionCode.MALFORMED, f"spill is full ({self.capacity})")

    def _record(self, update_id: str, weight: float) -> None:
        self.ids.append(update_id)
        self.weights.append(weight)


BLOCK_BYTES = 8 << 20  # one (n, block) float32 slice of the updates: 8 MiB


def block_for(n: int) -> int:
    """Coordinates per block so that one (n, block) float32 slice stays within BLOCK_BYTES."""
    return max(1024, min(BLOCK_COORDINATES, BLOCK_BYTES // (4 * max(n, 1))))


def _blocks(dimension: int, block_coordinates: int) -> Iterable[slice]:
    for start in range(0, dimension, block_coordinates):
        yield slice(start, min(start + block_coordinates, dimension))


def _blockwise(
    updates: np.ndarray,
    block_coordinates: int | None,
    reduce: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    n, dimension = updates.shape
    if n == 0:
        raise ValueError("no updates")
    block_coordinates = block_coordinates or block_for(n)
    result = np.empty(dimension, dtype=np.float32)
    for block in _blocks(dimension, block_coordinates):
        result[block] = reduce(np.asarray(updates[:, block]))
    return result


def _coordinates_by_row(block: np.ndarray) -> np.ndarray:
    # (n, B) → a new contiguous (B, n): partitioning n values per coordinate along the
    # contiguous axis is about twice as fast as along the strided one. Always a copy, because
    # callers partition it in place (``ascontiguousarray`` would return a one-column block's
    # transpose as a view of the caller's updates).
    return np.array(block.T, order="C", copy=True)


def coordinate_median(updates: np.ndarray, *, block_coordinates: int | None = None) -> np.ndarray:
    """Coordinate-wise median of (n, d) float32 updates → f32[d] (Yin et al. 2018).

    An even n takes the mean of the two middle values, computed in float64.
    """
    n = updates.shape[0]
    low, high = (n - 1) // 2, n // 2

    def reduce(block: np.ndarray) -> np.ndarray:
        ordered = _coordinates_by_row(block)
        ordered.partition((low, high), axis=1)  # in place on our own copy
        return (ordered[:, low].astype(np.float64) + ordered[:, high]) / 2.0

    return _blockwise(updates, block_coordinates, reduce)


def trimmed_mean(
    updates: np.ndarray, *, beta: float, block_coordinates: int | None = None
) -> np.ndarray:
    """Coordinate-wise beta-trimmed mean of (n, d) float32 updates → f32[d] (Yin et al. 2018).

    Drops ``floor(beta · n)`` values at each end of every coordinate (Flower's and SciPy's rule).
    """
    n = updates.shape[0]
    if not 0.0 <= beta < 0.5:
        raise ValueError("beta must be in [0, 0.5)")
    low = int(beta * n)
    high = n - low

    def reduce(block: np.ndarray) -> np.ndarray:
        ordered = _coordinates_by_row(block)
        ordered.partition((low, high - 1), axis=1)  # in place on our own copy
        return ordered[:, low:high].mean(axis=1, dtype=np.float64)

    return _blockwise(updates, block_coordinates, reduce)


def pairwise_squared_distances(
    updates: np.ndarray, *, block_coordinates: int | None = None
) -> np.ndarray:
    """Squared L2 distances between the rows of (n, d) updates → f64[n, n], blockwise.

    Each block adds ``|a|² + |b|² - 2a·b`` in float64 (one (n, block) matrix product);
    round-off below zero is clipped.
    """
    n, dimension = updates.shape
    distances = np.zeros((n, n), dtype=np.float64)
    for block in _blocks(dimension, block_coordinates or block_for(n)):
        rows = np.asarray(updates[:, block], dtype=np.float64)
        squares = np.einsum("ij,ij->i", rows, rows)
        distances += squares[:, None] + squares[None, :] - 2.0 * (rows @ rows.T)
    np.fill_diagonal(distances, 0.0)
    return np.maximum(distances, 0.0, out=distances)


def krum_scores(distances: np.ndarray, *, byzantine: int) -> np.ndarray:
    """Krum score of each update (f64[n]): the sum of its n - f - 2 smallest distances to the
    others (at least 1), Blanchard et al. 2017."""
    n = distances.shape[0]
    closest = max(1, n - byzantine - 2)
    others = distances + np.diag(np.full(n, np.inf))  # never count a row as its own neighbour
    nearest = np.partition(others, min(closest, n - 1) - 1, axis=1)[:, :closest]
    return nearest.sum(axis=1)


def multi_krum_select(
    updates: np.ndarray,
    *,
    byzantine: int,
    selected: int = 1,
    block_coordinates: int | None = None,
) -> np.ndarray:
    """Indices (int64[m]) of the ``selected`` updates with the lowest Krum scores, best first."""
    n = updates.shape[0]
    if not 1 <= selected <= n:
        raise ValueError("selected must be in 1..n")
    if byzantine < 0:
        raise ValueError("byzantine must be >= 0")
    scores = krum_scores(
        pairwise_squared_distances(updates, block_coordinates=block_coordinates),
        byzantine=byzantine,
    )
    return np.argsort(scores, kind="stable")[:selected]


def multi_krum(
    updates: np.ndarray,
    *,
    byzantine: int,
    selected: int = 1,
    weights: np.ndarray | None = None,
    block_coordinates: int | None = None,
) -> np.ndarray:
    """Krum (``selected=1``: the best update itself) or Multi-Krum (weighted mean of the
    ``selected`` best, weights f64[n] defaulting to equal): (n, d) float32 → f32[d]."""
    chosen = multi_krum_select(
        updates, byzantine=byzantine, selected=selected, block_coordinates=block_coordinates
    )
    if selected == 1:
        return np.array(updates[int(chosen[0])], dtype=np.float32)
    chosen.sort()
    chosen_weights = (
        np.ones(len(chosen)) if weights is None else np.asarray(weights, dtype=np.float64)[chosen]
    )
    return _weighted_rows_mean(updates, chosen, chosen_weights, block_coordinates)


def norm_bounded_mean(
    updates: np.ndarray,
    *,
    bound: float,
    weights: np.ndarray | None = None,
    block_coordinates: int | None = None,
) -> np.ndarray:
    """Clip each update to L2 norm ``bound`` (u · min(1, bound/|u|)), then take the weighted
    mean (weights f64[n], default equal): (n, d) float32 → f32[d] (Sun et al. 2019)."""
    n = updates.shape[0]
    if not bound > 0.0:
        raise ValueError("bound must be positive")
    norms = np.sqrt(
        np.array([sum_of_squares(np.asarray(updates[i])) for i in range(n)], dtype=np.float64)
    )
    scale = np.minimum(1.0, bound / np.maximum(norms, np.finfo(np.float64).tiny))
    row_weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    return _weighted_rows_mean(
        updates,
        np.arange(n),
        row_weights * scale,
        block_coordinates,
        denominator=float(row_weights.sum()),
    )


def _weighted_rows_mean(
    updates: np.ndarray,
    rows: np.ndarray,
    row_weights: np.ndarray,
    block_coordinates: int,
    *,
    denominator: float | None = None,
) -> np.ndarray:
    total = float(row_weights.sum()) if denominator is None else denominator
    coefficients = row_weights / total
    return _blockwise(
        updates,
        block_coordinates,
        lambda block: coefficients @ block[rows].astype(np.float64),
    )
