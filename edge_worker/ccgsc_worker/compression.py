"""Client-side update encodings for compressed FL rounds: int8, top-k with error feedback, signSGD.

The one definition of the payloads a client uploads after the 32-byte metrics header
(docs/aggregation.md, "Compression"); the server's decoders (``jobs.aggregation.compression``)
read the same layout, and the worker page's ``compression.js`` writes the same bytes. Every
payload starts with a 16-byte little-endian header: 2-byte magic, version 1, a reserved byte, a
u32 parameter (int8: the block size; top-k: k; signSGD: 0) and the u64 dimension.

Both clients must produce identical bytes from the same update, so every step is specified to
the bit: int8's stochastic rounding draws its uniforms from a counter-based 32-bit hash of the
seed and the coordinate (``rounding_uniforms``), computed in float32 as a browser can; top-k
keeps the k largest magnitudes with ties going to the lower index. Only numpy; no Django.
"""

from __future__ import annotations

import math
import struct

import numpy as np

HEADER = struct.Struct("<2sBBIQ")
VERSION = 1
INT8_BLOCK = 256
SCHEMES = ("int8", "topk", "signsgd")
MAGIC = {"int8": b"Q8", "topk": b"TK", "signsgd": b"SG"}
_U32 = np.uint32


def encoded_bytes(scheme: str, dimension: int, *, k: int = 0) -> int:
    """The size of a payload of ``scheme`` for ``dimension`` coordinates (header included)."""
    if scheme == "int8":
        return HEADER.size + 4 * -(-dimension // INT8_BLOCK) + dimension
    if scheme == "topk":
        return HEADER.size + 8 * k
    if scheme == "signsgd":
        return HEADER.size + -(-dimension // 8)
    raise ValueError(f"unknown compression scheme {scheme!r}")


def topk_count(dimension: int, fraction: float) -> int:
    """k for a top-k job: ⌈d · fraction⌉, at least 1 and at most d."""
    return min(dimension, max(1, math.ceil(dimension * fraction)))


def _fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser over u32 values (wrapping arithmetic)."""
    x = x ^ (x >> _U32(16))
    x = x * _U32(0x85EBCA6B)
    x = x ^ (x >> _U32(13))
    x = x * _U32(0xC2B2AE35)
    return x ^ (x >> _U32(16))


def rounding_uniforms(seed: int, count: int) -> np.ndarray:
    """f32[count] uniforms in [0, 1) for coordinates 0..count-1: u_i = (h_i >> 8) · 2⁻²⁴ with
    h_i = fmix32(fmix32(i ⊕ s) + 0x9E3779B9) and s the seed's low 32 bits. Counter-based, so a
    browser computes any coordinate's draw with 32-bit integer maths alone."""
    index = np.arange(count, dtype=np.uint64).astype(_U32)
    with np.errstate(over="ignore"):
        hashed = _fmix32(_fmix32(index ^ _U32(seed & 0xFFFFFFFF)) + _U32(0x9E3779B9))
    return ((hashed >> _U32(8)).astype(np.float32) * np.float32(2.0**-24)).astype(np.float32)


def int8_payload(update: np.ndarray, *, seed: int, block_size: int = INT8_BLOCK) -> bytes:
    """Quantise a finite f32[d] to int8 with one float32 scale per block, stochastically rounded.

    scale_b = max|x| / 127 (float32) over the block; q = clip(floor(x / scale_b + u), ±127) with u
    from ``rounding_uniforms(seed)``, each operation rounded to float32: unbiased and
    |decode − x| < scale_b. Layout: header, f32 scales [⌈d / block⌉], int8 values [d]."""
    dimension = update.shape[0]
    blocks = -(-dimension // block_size)
    padded = np.zeros(blocks * block_size, dtype=np.float32)
    padded[:dimension] = update
    grid = padded.reshape(blocks, block_size)
    scales = (np.abs(grid).max(axis=1) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0)).astype(np.float32)
    noise = rounding_uniforms(seed, blocks * block_size).reshape(grid.shape)
    quantised = np.floor((grid / safe[:, None]).astype(np.float32) + noise)
    quantised = np.clip(quantised, -127, 127).astype(np.int8).reshape(-1)[:dimension]
    header = HEADER.pack(MAGIC["int8"], VERSION, 0, block_size, dimension)
    return header + scales.astype("<f4").tobytes() + quantised.tobytes()


def topk_select(corrected: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k largest |x| of f32[d] (ties: the lower index) → (indices u32[k] increasing, values
    f32[k], the rest f32[d] with the kept coordinates zeroed). ``corrected`` is not modified."""
    dimension = corrected.shape[0]
    if not 1 <= k <= dimension:
        raise ValueError("k must be in 1..dimension")
    order = np.argsort(-np.abs(corrected), kind="stable")[:k]
    support = np.sort(order)
    rest = corrected.astype(np.float32, copy=True)
    values = rest[support].copy()
    rest[support] = 0.0
    return support.astype(np.uint32), values, rest


def topk_payload(indices: np.ndarray, values: np.ndarray, dimension: int) -> bytes:
    """Header (k, d), then u32 indices, then f32 values, little-endian."""
    header = HEADER.pack(MAGIC["topk"], VERSION, 0, indices.shape[0], dimension)
    return header + indices.astype("<u4").tobytes() + values.astype("<f4").tobytes()


def sign_payload(update: np.ndarray) -> bytes:
    """One bit per coordinate (1 for x ≥ 0, −0 included), big-endian within each byte."""
    bits = np.packbits(update >= 0)
    return HEADER.pack(MAGIC["signsgd"], VERSION, 0, 0, update.shape[0]) + bits.tobytes()


class ResidualStore:
    """Top-k's error-feedback residuals, one f32[d] per job, in the worker's memory.

    ``compress`` sends the top k of update + residual; the new residual is only kept once the
    server accepted the upload (``commit``), so an update that never arrived does not leave its
    unsent part behind as if the rest had been delivered."""

    def __init__(self) -> None:
        self._residuals: dict[str, np.ndarray] = {}
        self._pending: dict[str, np.ndarray] = {}

    def residual(self, job: str, dimension: int) -> np.ndarray:
        """The job's residual (zeros at first, or when the model's size changed)."""
        held = self._residuals.get(job)
        if held is None or held.shape[0] != dimension:
            return np.zeros(dimension, dtype=np.float32)
        return held

    def compress(self, job: str, update: np.ndarray, *, k: int) -> bytes:
        """The top-k payload of ``update + residual``; the new residual waits for ``commit``."""
        corrected = (update + self.residual(job, update.shape[0])).astype(np.float32)
        indices, values, rest = topk_select(corrected, k)
        self._pending[job] = rest
        return topk_payload(indices, values, update.shape[0])

    def commit(self, job: str) -> None:
        """The upload was accepted: its leftover becomes the job's residual."""
        if job in self._pending:
            self._residuals[job] = self._pending.pop(job)

    def discard(self, job: str) -> None:
        """The upload was not accepted: keep the previous residual."""
        self._pending.pop(job, None)
