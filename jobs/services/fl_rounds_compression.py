"""Compressed uploads in FL rounds (docs/federated-learning.md, "Compressed uploads").

A job's ``compression`` (int8, top-k with error feedback, signSGD) changes four things, all here
so the round services call one function each: what the invite tells the client (the scheme, k,
the int8 rounding seed), how long an upload is (the metrics header, then the encoded payload of
``ccgsc_worker.compression``), what completion checks (the payload's header: scheme, parameter
and d, else ``bad_encoding``), and how the fold reads the update (int8 decoded into the dense
fold, top-k folded sparse, signSGD into a majority vote with its own checkpoint and the server
step w + η·sign). The strategies that aggregate at close (robust rules, q-FFL) read the decoded
dense update. Nothing here knows storage keys: callers pass ``open_chunks`` (a fresh iterator
over the payload's bytes, metrics header skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from ccgsc_worker.compression import HEADER, INT8_BLOCK, encoded_bytes, topk_count
from jobs.aggregation import (
    RejectionCode,
    SignVote,
    SparseUpdate,
    StreamingFold,
    UpdateRejected,
    int8_decode,
)
from jobs.aggregation.compression import payload_header
from jobs.fl_models import Compression, FlConfig

BAD_ENCODING = "bad_encoding"  # the rejection code of a payload whose header is not the job's
HEADER_BYTES = HEADER.size  # a payload's own header, after the 32-byte metrics header
OpenChunks = Callable[[], Iterable[bytes]]


def is_compressed(config: FlConfig) -> bool:
    """The job uploads an encoded payload rather than f32[d]."""
    return config.compression != Compression.NONE


def topk_k(config: FlConfig) -> int:
    """k of a top-k job: ⌈d · fraction⌉ (1 ≤ k ≤ d)."""
    return topk_count(config.parameter_count, config.topk_fraction or 0.0)


def payload_bytes(config: FlConfig) -> int:
    """The encoded update's size after the metrics header (compressed jobs only)."""
    return encoded_bytes(config.compression, config.parameter_count, k=_parameter(config))


def _parameter(config: FlConfig) -> int:
    """The u32 the payload header must carry: int8's block size, top-k's k, 0 for signSGD."""
    if config.compression == Compression.INT8:
        return INT8_BLOCK
    if config.compression == Compression.TOPK:
        return topk_k(config)
    return 0


def compression_invite_terms(*, config: FlConfig, seed: int) -> dict[str, Any]:
    """The invite's ``compression`` (absent for dense jobs): the scheme, top-k's k, and int8's
    rounding seed (the low 32 bits of the participation's seed)."""
    if not is_compressed(config):
        return {}
    terms: dict[str, Any] = {"scheme": config.compression}
    if config.compression == Compression.TOPK:
        terms["k"] = topk_k(config)
    elif config.compression == Compression.INT8:
        terms["seed"] = seed & 0xFFFFFFFF
    return {"compression": terms}


def payload_rejection(*, config: FlConfig, head: bytes) -> str | None:
    """Why the payload's first bytes (its 16-byte header) are not this job's encoding, or None."""
    try:
        parameter, dimension = payload_header(head, config.compression)
    except UpdateRejected as exc:
        return f"{config.compression} payload: {exc.message}"
    expected = (_parameter(config), config.parameter_count)
    if (parameter, dimension) != expected:
        return (
            f"{config.compression} payload header says parameter {parameter}, d {dimension}; "
            f"this job expects {expected[0]}, d {expected[1]}"
        )
    return None


def _payload(open_chunks: OpenChunks) -> bytes:
    # Payloads are small next to the dense update they stand for (int8: a quarter of it).
    return b"".join(open_chunks())


def empty_fold(config: FlConfig, dimension: int) -> StreamingFold | SignVote:
    """A round's fold before its first update: a majority vote for signSGD, else the sum."""
    if config.compression == Compression.SIGNSGD:
        return SignVote(dimension)
    return StreamingFold(dimension)


def fold_restore(config: FlConfig, data: bytes) -> StreamingFold | SignVote:
    """A round's fold from its checkpoint bytes."""
    if config.compression == Compression.SIGNSGD:
        return SignVote.restore(data)
    return StreamingFold.restore(data)


def update_fold_into(
    fold: Any,
    *,
    config: FlConfig,
    update_id: str,
    open_chunks: OpenChunks,
    weight: float,
    clip_norm: float | None = None,
) -> bool:
    """Fold one stored update into the round's fold, decoding it per the job's compression;
    False if it was folded already. Raises ``UpdateRejected`` and then changes nothing."""
    if config.compression == Compression.NONE:
        return fold.fold_chunks(update_id, open_chunks, weight, clip_norm=clip_norm)
    if update_id in fold.folded_ids:  # a retried task: nothing to decode
        return False
    if config.compression == Compression.INT8:
        dense = int8_decode(_payload(open_chunks))
        return fold.fold(update_id, dense, weight, clip_norm=clip_norm)
    if config.compression == Compression.TOPK:
        sparse = SparseUpdate.decode(_payload(open_chunks))
        _check_dimension(sparse.dimension, fold.dimension)
        return fold.fold_sparse(update_id, sparse.indices, np.array(sparse.values), weight)
    return fold.fold(update_id, _payload(open_chunks))


def _check_dimension(found: int, expected: int) -> None:
    """A top-k payload's d must be the round's (``fold_sparse`` checks only the indices)."""
    if found != expected:
        raise UpdateRejected(
            RejectionCode.WRONG_LENGTH, f"payload d is {found}, expected {expected}"
        )


def dense_update(*, config: FlConfig, open_chunks: OpenChunks) -> np.ndarray:
    """A stored update as f32[d] (decoded for int8 and top-k), for the close-time strategies."""
    if config.compression == Compression.INT8:
        return int8_decode(_payload(open_chunks))
    if config.compression == Compression.TOPK:
        return SparseUpdate.decode(_payload(open_chunks)).to_dense()
    return np.frombuffer(_payload(open_chunks), dtype="<f4").astype(np.float32)


def dense_chunks(*, config: FlConfig, open_chunks: OpenChunks) -> Iterator[bytes]:
    """A stored update as little-endian f32 chunks: dense jobs' chunks as stored, compressed
    ones decoded (one update at a time)."""
    if not is_compressed(config):
        yield from open_chunks()
        return
    yield dense_update(config=config, open_chunks=open_chunks).astype("<f4").tobytes()


def sign_step(*, weights: np.ndarray, vote: SignVote, config: FlConfig) -> np.ndarray:
    """signSGD's server step on delta signs: w + η·sign(Σ votes) as f32[d] (a tie moves 0)."""
    eta = float((config.strategy_options or {}).get("server_learning_rate", 1e-3))
    step = weights.astype(np.float64) + eta * vote.finish().astype(np.float64)
    return step.astype(np.float32)
