"""Update compression: int8 quantisation, top-k sparsification with error feedback, signSGD.

Encoders run on clients (the browser and edge workers mirror these formats), decoders on the
server before the fold. Every encoding starts with a 16-byte little-endian header:
2-byte magic, version (1), a reserved byte, a u32 parameter (block size or k) and the u64
dimension, so a payload is self-describing and a truncated one is rejected.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from ccgsc_worker.compression import (
    HEADER,
    INT8_BLOCK,
    MAGIC,
    VERSION,
    int8_payload,
    sign_payload,
    topk_payload,
    topk_select,
)
from jobs.aggregation.validation import (
    FLOAT32,
    RejectionCode,
    UpdateRejected,
    validate_update,
)

# The layout and the encoders are the clients' (ccgsc_worker.compression): one definition.
_HEADER = HEADER
_VERSION = VERSION
_INT8_MAGIC = MAGIC["int8"]
_TOPK_MAGIC = MAGIC["topk"]
_SIGN_MAGIC = MAGIC["signsgd"]


def payload_header(payload: bytes, scheme: str) -> tuple[int, int]:
    """The (parameter, dimension) of a payload's 16-byte header for ``scheme`` (int8, topk,
    signsgd); ``UpdateRejected`` (malformed) for a short header, another magic or version."""
    parameter, dimension, _ = _header(payload[: _HEADER.size], MAGIC[scheme])
    return parameter, dimension


def _header(payload: bytes, magic: bytes) -> tuple[int, int, memoryview]:
    if len(payload) < _HEADER.size:
        raise UpdateRejected(RejectionCode.MALFORMED, "payload shorter than its header")
    found, version, _, parameter, dimension = _HEADER.unpack_from(payload)
    if found != magic or version != _VERSION:
        raise UpdateRejected(
            RejectionCode.MALFORMED, f"expected {magic!r} v{_VERSION}, got {found!r} v{version}"
        )
    return parameter, dimension, memoryview(payload)[_HEADER.size :]


def _expect_length(body: memoryview, expected: int) -> None:
    if len(body) != expected:
        raise UpdateRejected(
            RejectionCode.WRONG_LENGTH, f"payload body is {len(body)} bytes, expected {expected}"
        )


# int8 ---------------------------------------------------------------------------------------


def int8_encode(update: np.ndarray, *, seed: int, block_size: int = INT8_BLOCK) -> bytes:
    """Quantise f32[d] to int8 with one float32 scale per block and stochastic rounding.

    scale_b = max|x| / 127 over the block; q = floor(x / scale_b + u), u uniform in [0, 1) from
    ``seed`` (its low 32 bits; ``ccgsc_worker.compression.rounding_uniforms``): unbiased
    (E[decode] = x) and |decode - x| < scale_b. Layout: header, f32 scales [ceil(d / block)],
    int8 values [d]. Size ≈ d · (1 + 4 / block) bytes.
    """
    validate_update(update, dimension=update.shape[0])
    return int8_payload(update, seed=seed, block_size=block_size)


def int8_decode(payload: bytes) -> np.ndarray:
    """Decode ``int8_encode`` output back to f32[d]."""
    block_size, dimension, body = _header(payload, _INT8_MAGIC)
    if block_size == 0:
        raise UpdateRejected(RejectionCode.MALFORMED, "block size is zero")
    blocks = -(-dimension // block_size)
    _expect_length(body, 4 * blocks + dimension)
    scales = np.frombuffer(body[: 4 * blocks], dtype=FLOAT32)
    if not np.isfinite(scales).all():
        raise UpdateRejected(RejectionCode.NON_FINITE, "a block scale is NaN or Inf")
    quantised = np.frombuffer(body[4 * blocks :], dtype=np.int8)
    per_value = np.repeat(scales, block_size)[:dimension]
    return (quantised.astype(np.float32) * per_value).astype(np.float32)


# top-k with error feedback --------------------------------------------------------------------


@dataclass
class SparseUpdate:
    """A top-k update: indices u32[k] (strictly increasing), values f32[k], dimension d."""

    indices: np.ndarray
    values: np.ndarray
    dimension: int

    def encode(self) -> bytes:
        """Header (k, d), then u32 indices, then f32 values, little-endian."""
        return topk_payload(self.indices, self.values, self.dimension)

    @classmethod
    def decode(cls, payload: bytes) -> SparseUpdate:
        k, dimension, body = _header(payload, _TOPK_MAGIC)
        _expect_length(body, 8 * k)
        indices = np.frombuffer(body[: 4 * k], dtype="<u4")
        values = np.frombuffer(body[4 * k :], dtype=FLOAT32)
        if k and (np.any(np.diff(indices.astype(np.int64)) <= 0) or int(indices[-1]) >= dimension):
            raise UpdateRejected(RejectionCode.MALFORMED, "indices unsorted or out of range")
        return cls(indices=indices, values=values, dimension=dimension)

    def to_dense(self) -> np.ndarray:
        """The update as f32[d] (zeros off the support)."""
        dense = np.zeros(self.dimension, dtype=np.float32)
        dense[self.indices] = self.values
        return dense


@dataclass
class TopKResidual:
    """A client's error-feedback state for top-k (Stich et al. 2018; Karimireddy et al. 2019).

    Each round the client compresses ``update + residual``, sends the k largest magnitudes and
    keeps the rest as the next residual, so nothing is lost, only delayed. Invariant:
    ``sparse.to_dense() + residual_after == update + residual_before`` exactly. The residual is
    client state (``ccgsc_worker.compression.ResidualStore``, the page's ``compression.js``); the
    server never sees it.
    """

    dimension: int
    residual: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.residual = np.zeros(self.dimension, dtype=np.float32)

    def compress(self, update: np.ndarray, *, k: int) -> SparseUpdate:
        """Top-k of update + residual (update f32[d] is not modified); updates the residual."""
        validate_update(update, dimension=self.dimension)
        corrected = (update + self.residual).astype(np.float32)
        indices, values, self.residual = topk_select(corrected, k)
        return SparseUpdate(indices=indices, values=values, dimension=self.dimension)


# signSGD with majority vote ----------------------------------------------------------------------


def sign_encode(update: np.ndarray) -> bytes:
    """One bit per coordinate (1 for x >= 0, 0 for x < 0), packed big-endian within each byte
    (numpy's ``packbits``); signSGD (Bernstein et al. 2018) sends d/8 bytes."""
    validate_update(update, dimension=update.shape[0])
    return sign_payload(update)


class SignVote:
    """Majority vote over signSGD updates: votes i32[d] += ±1 per client, streaming and
    idempotent per update id; ``finish`` gives sign(votes) as f32[d] in {-1, 0, +1} (a tie is 0).
    The server applies ``w - server_learning_rate · finish()`` for gradient signs, or
    ``w + server_learning_rate · finish()`` for delta signs."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self.votes = np.zeros(dimension, dtype=np.int32)
        self._folded_ids: set[str] = set()

    def fold(self, update_id: str, payload: bytes) -> bool:
        """Add one client's packed signs; False if already folded."""
        if update_id in self._folded_ids:
            return False
        _, dimension, body = _header(payload, _SIGN_MAGIC)
        if dimension != self.dimension:
            raise UpdateRejected(
                RejectionCode.WRONG_LENGTH, f"expected {self.dimension} signs, got {dimension}"
            )
        _expect_length(body, -(-dimension // 8))
        bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8), count=dimension)
        self.votes += 2 * bits.astype(np.int32) - 1
        self._folded_ids.add(update_id)
        return True

    @property
    def count(self) -> int:
        return len(self._folded_ids)

    @property
    def folded_ids(self) -> frozenset[str]:
        return frozenset(self._folded_ids)

    def finish(self) -> np.ndarray:
        """The majority sign per coordinate, f32[d]."""
        return np.sign(self.votes).astype(np.float32)

    def checkpoint(self) -> bytes:
        """The exact state (votes, folded ids) as an ``.npz``."""
        buffer = io.BytesIO()
        np.savez(buffer, votes=self.votes, ids=np.array(sorted(self._folded_ids), dtype=np.str_))
        return buffer.getvalue()

    @classmethod
    def restore(cls, data: bytes) -> SignVote:
        """Rebuild a vote from ``checkpoint()``."""
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            vote = cls(int(archive["votes"].shape[0]))
            vote.votes[:] = archive["votes"]
            vote._folded_ids = {str(update_id) for update_id in archive["ids"]}
        return vote
