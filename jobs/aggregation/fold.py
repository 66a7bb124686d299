"""Streaming FedAvg: fold each update into one float64 accumulator as it arrives.

Memory is O(d) whatever the number of clients (one f64[d] sum plus a small scratch block), the
work after the last arrival is one division, and the state checkpoints to bytes so a restarted
aggregator resumes exactly where it stopped. Folds are idempotent per update id: a retried task
that folds the same update twice counts it once.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import BinaryIO

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

ChunkSource = Callable[[], Iterable[bytes]]

_MAGIC = b"CCFOLD01"
_HEADER = struct.Struct("<8sQQdQ")  # magic, dimension, count, total weight, ids JSON length
_DIGEST_BYTES = 32


class StreamingFold:
    """Weighted mean of f32[d] updates, accumulated in float64.

    ``fold`` takes a whole update; ``fold_chunks`` a re-readable source of little-endian
    float32 chunks (an update in storage), never holding the update whole; ``fold_stream`` a
    one-pass stream of such chunks; ``fold_sparse`` the indices and values of a top-k update.
    ``finish`` returns the mean as f32[d].
    """

    def __init__(self, dimension: int) -> None:
        if dimension <= 0:
            raise ValueError("dimension must be positive")
        self.dimension = dimension
        self._sum = np.zeros(dimension, dtype=np.float64)
        self._scratch = np.empty(min(dimension, BLOCK_COORDINATES), dtype=np.float64)
        self.total_weight = 0.0
        self.count = 0
        self._folded_ids: set[str] = set()
        self._damaged: str | None = None  # set when a one-pass stream failed half-added
        # The L2 norm of the last update ``fold``/``fold_chunks`` added, before any clipping
        # (DP rounds count the adaptive-clipping bit from it); not part of the checkpoint.
        self.last_norm: float | None = None

    def has_folded(self, update_id: str) -> bool:
        """Whether this update id is already part of the sum."""
        return update_id in self._folded_ids

    @property
    def folded_ids(self) -> frozenset[str]:
        return frozenset(self._folded_ids)

    def fold(
        self,
        update_id: str,
        update: np.ndarray,
        weight: float,
        *,
        max_norm: float | None = None,
        clip_norm: float | None = None,
    ) -> bool:
        """Add ``weight * update`` (update: f32[d]) once; return False if the id was folded.

        Validation runs before anything is added: a rejected update leaves the sum untouched.
        ``max_norm`` rejects a longer update; ``clip_norm`` scales it down to that norm instead
        (norm bounding, DP clipping) while its weight still counts in full.
        """
        self._check_usable()
        if update_id in self._folded_ids:
            return False
        weight = validate_weight(weight)
        norm = validate_update(update, dimension=self.dimension, max_norm=max_norm)
        self._add_block(0, update, weight * _clip_scale(norm, clip_norm))
        self._record(update_id, weight)
        self.last_norm = norm
        return True

    def fold_chunks(
        self,
        update_id: str,
        open_chunks: ChunkSource,
        weight: float,
        *,
        max_norm: float | None = None,
        clip_norm: float | None = None,
    ) -> bool:
        """Fold an update read as little-endian float32 chunks; return False if already folded.

        ``open_chunks()`` must return a fresh iterator over the same immutable bytes each time
        (an object in content-addressed storage): the first pass validates length, finiteness
        and norm, the second adds. Memory is one chunk; a rejected update adds nothing.
        ``max_norm`` and ``clip_norm`` as for ``fold``.
        """
        self._check_usable()
        if update_id in self._folded_ids:
            return False
        weight = validate_weight(weight)
        offset = 0
        squares = 0.0
        for chunk in open_chunks():
            values = check_chunk(chunk, offset=offset, dimension=self.dimension)
            squares += sum_of_squares(values)
            offset += values.shape[0]
        norm = check_totals(
            length=offset, dimension=self.dimension, squares=squares, max_norm=max_norm
        )
        scaled_weight = weight * _clip_scale(norm, clip_norm)
        offset = 0
        for chunk in open_chunks():
            values = check_chunk(chunk, offset=offset, dimension=self.dimension)
            self._add_block(offset, values, scaled_weight)
            offset += values.shape[0]
        if offset != self.dimension:  # the source changed between passes: a storage bug
            raise RuntimeError("update source returned different bytes on the second read")
        self._record(update_id, weight)
        self.last_norm = norm
        return True

    def fold_stream(
        self,
        update_id: str,
        chunks: Iterable[bytes],
        weight: float,
        *,
        max_norm: float | None = None,
    ) -> bool:
        """Fold an update straight from a one-pass stream of little-endian float32 chunks.

        Each chunk is checked (whole floats, finite, running norm within ``max_norm``, not past
        d) before it is added, so memory is one chunk and nothing is stored. But a chunk that
        fails after earlier ones were added cannot be taken back exactly (``a + x - x`` is not
        ``a`` in floating point): the fold is then marked damaged, raises ``UpdateRejected``,
        and refuses all use until replaced by ``StreamingFold.restore`` of the last checkpoint
        (then refold the updates since from storage). Prefer ``fold_chunks`` when the update
        is stored anyway.
        """
        self._check_usable()
        if update_id in self._folded_ids:
            return False
        weight = validate_weight(weight)
        bound_squared = None if max_norm is None else max_norm * max_norm
        offset = 0
        squares = 0.0
        try:
            for chunk in chunks:
                values = check_chunk(chunk, offset=offset, dimension=self.dimension)
                squares += sum_of_squares(values)
                if not math.isfinite(squares):
                    raise UpdateRejected(RejectionCode.NON_FINITE, "update contains NaN or Inf")
                if bound_squared is not None and squares > bound_squared:
                    raise UpdateRejected(
                        RejectionCode.NORM_EXCEEDED,
                        f"L2 norm exceeds the policy bound {max_norm:g} by value {offset}",
                    )
                self._add_block(offset, values, weight)
                offset += values.shape[0]
            if offset != self.dimension:
                raise UpdateRejected(
                    RejectionCode.WRONG_LENGTH, f"expected {self.dimension} values, got {offset}"
                )
        except BaseException as error:
            if offset:  # something was added: the sum is no longer any set of whole updates
                self._damaged = f"stream of {update_id!r} failed after {offset} values: {error}"
            raise
        self._record(update_id, weight)
        return True

    def fold_sparse(
        self, update_id: str, indices: np.ndarray, values: np.ndarray, weight: float
    ) -> bool:
        """Fold a sparse update (indices: u32[k] strictly increasing, values: f32[k]) once."""
        self._check_usable()
        if update_id in self._folded_ids:
            return False
        weight = validate_weight(weight)
        if indices.ndim != 1 or values.ndim != 1 or indices.shape != values.shape:
            raise UpdateRejected(
                RejectionCode.WRONG_SHAPE, "indices and values must be flat, same length"
            )
        if values.dtype != FLOAT32:
            raise UpdateRejected(RejectionCode.WRONG_DTYPE, f"expected float32, got {values.dtype}")
        if not np.issubdtype(indices.dtype, np.integer):
            raise UpdateRejected(RejectionCode.WRONG_DTYPE, f"indices are {indices.dtype}")
        if indices.shape[0]:
            if np.any(np.diff(indices.astype(np.int64)) <= 0):
                raise UpdateRejected(RejectionCode.MALFORMED, "indices must be strictly increasing")
            if int(indices[0]) < 0 or int(indices[-1]) >= self.dimension:
                raise UpdateRejected(RejectionCode.WRONG_LENGTH, "index outside the dimension")
            if not np.isfinite(values).all():
                raise UpdateRejected(RejectionCode.NON_FINITE, "update contains NaN or Inf")
        self._sum[indices] += values.astype(np.float64) * weight
        self._record(update_id, weight)
        return True

    def fold_sum(self, update_ids: Sequence[str], total: np.ndarray) -> bool:
        """Fold ``total`` (f64[d], finite), the already-added sum of the updates ``update_ids``,
        each with weight 1: a secure round's unmasked sum, kept in float64 so an analytics
        round's exact sum is not rounded to float32. False (nothing added) if any id was folded.
        """
        self._check_usable()
        ids = [str(i) for i in update_ids]
        if not ids or len(set(ids)) != len(ids) or self._folded_ids.intersection(ids):
            return False
        values = np.asarray(total)
        if values.dtype != np.float64 or values.shape != (self.dimension,):
            raise UpdateRejected(RejectionCode.WRONG_SHAPE, f"expected f64[{self.dimension}]")
        if not np.isfinite(values).all():
            raise UpdateRejected(RejectionCode.NON_FINITE, "sum contains NaN or Inf")
        np.add(self._sum, values, out=self._sum)
        for update_id in ids:
            self._record(update_id, 1.0)
        return True

    def finish(self, out: np.ndarray | None = None) -> np.ndarray:
        """The weighted mean as f32[d], written into ``out`` (f32[d]) when given, else new.

        The fold stays usable: buffered-async rounds read the mean many times, and ``out``
        lets them do so without a new array each time.
        """
        self._check_usable()
        if self.count == 0:
            raise ValueError("no update has been folded")
        if out is None:
            out = np.empty(self.dimension, dtype=np.float32)
        elif out.shape != (self.dimension,) or out.dtype != np.float32:
            raise ValueError("out must be a float32 vector of the fold's dimension")
        # Divide in float64 straight into the float32 result: no d-sized float64 temporary.
        np.divide(self._sum, self.total_weight, out=out, casting="same_kind")
        return out

    def weighted_sum(self) -> np.ndarray:
        """A read-only view of the float64 sum of ``weight * update`` (f64[d])."""
        view = self._sum.view()
        view.flags.writeable = False
        return view

    def checkpoint(self, file: BinaryIO | None = None) -> bytes | None:
        """Serialise the exact state (sum bytes, weight, count, ids) with a SHA-256 trailer.

        Writes to ``file`` and returns None, or returns the bytes when no file is given.
        """
        self._check_usable()
        ids = json.dumps(sorted(self._folded_ids), separators=(",", ":")).encode()
        header = _HEADER.pack(_MAGIC, self.dimension, self.count, self.total_weight, len(ids))
        digest = hashlib.sha256()
        target = file if file is not None else io.BytesIO()
        body = self._sum.astype("<f8", copy=False).data
        for part in (header, ids, body):
            digest.update(part)
            target.write(part)
        target.write(digest.digest())
        return None if file is not None else target.getvalue()  # type: ignore[union-attr]

    @classmethod
    def restore(cls, source: bytes | BinaryIO) -> StreamingFold:
        """Rebuild a fold from ``checkpoint()`` output; a torn or altered checkpoint raises."""
        data = source if isinstance(source, bytes | bytearray) else source.read()
        view = memoryview(data)
        if len(view) < _HEADER.size + _DIGEST_BYTES:
            raise ValueError("checkpoint is truncated")
        magic, dimension, count, total_weight, ids_length = _HEADER.unpack_from(view)
        if magic != _MAGIC:
            raise ValueError("not a fold checkpoint")
        expected = _HEADER.size + ids_length + 8 * dimension + _DIGEST_BYTES
        if len(view) != expected:
            raise ValueError(f"checkpoint is {len(view)} bytes, expected {expected}")
        if hashlib.sha256(view[:-_DIGEST_BYTES]).digest() != bytes(view[-_DIGEST_BYTES:]):
            raise ValueError("checkpoint digest mismatch")
        ids_end = _HEADER.size + ids_length
        fold = cls(dimension)
        fold._folded_ids = set(json.loads(bytes(view[_HEADER.size : ids_end])))
        fold._sum[:] = np.frombuffer(view[ids_end:-_DIGEST_BYTES], dtype="<f8")
        fold.count = count
        fold.total_weight = total_weight
        return fold

    def _add_block(self, start: int, values: np.ndarray, weight: float) -> None:
        # Cast and scale into a cache-sized float64 scratch, then add: the sum never sees a
        # float32 product, and no d-sized temporary is allocated per update.
        for offset in range(0, values.shape[0], self._scratch.shape[0]):
            part = values[offset : offset + self._scratch.shape[0]]
            scratch = self._scratch[: part.shape[0]]
            np.multiply(part, weight, out=scratch, dtype=np.float64)
            target = self._sum[start + offset : start + offset + part.shape[0]]
            np.add(target, scratch, out=target)

    def _check_usable(self) -> None:
        if self._damaged is not None:
            raise RuntimeError(f"fold is damaged, restore the last checkpoint: {self._damaged}")

    def _record(self, update_id: str, weight: float) -> None:
        self._folded_ids.add(update_id)
        self.count += 1
        self.total_weight += weight


def _clip_scale(norm: float, clip_norm: float | None) -> float:
    if clip_norm is None:
        return 1.0
    if not clip_norm > 0.0:
        raise ValueError("clip_norm must be positive")
    return 1.0 if norm <= clip_norm else clip_norm / norm


def weighted_mean(updates: Iterable[tuple[np.ndarray, float]]) -> np.ndarray:
    """Weighted mean of (f32[d], weight) pairs through a fold: Flower's ``aggregate()`` shape."""
    fold: StreamingFold | None = None
    for index, (update, weight) in enumerate(updates):
        if fold is None:
            fold = StreamingFold(update.shape[0])
        fold.fold(str(index), update, weight)
    if fold is None:
        raise ValueError("no updates")
    return fold.finish()
