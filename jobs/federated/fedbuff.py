"""Buffered asynchronous aggregation: FedBuff (Nguyen et al. 2022, "Federated Learning with
Buffered Asynchronous Aggregation").

Clients train on whatever global version they fetched and upload whenever they finish. The
server folds each update into a buffer of K; every K folds it emits a new global version.
An update's staleness is ``server version − base version`` (how many versions were emitted
while it trained). Updates staler than ``max_staleness`` are dropped; the others are folded
with weight ``examples · s(staleness)``:

| weighting | s(τ) |
|---|---|
| constant | 1 |
| polynomial (FedBuff's default, a = 0.5) | (1 + τ)^-a |
| hinge (Xie et al. 2019, FedAsync) | 1 if τ ≤ b, else 1 / (a·(τ − b) + 1) |

FedBuff's server step is ``w ← w + η_g · Σ n_k s(τ_k) Δ_k / Σ n_k``: dividing by the examples
(not by the discounted weights) is what lets staleness shrink a step. ``normalize=True`` divides
by Σ n_k s(τ_k) instead (a plain weighted mean). The step itself is any ``jobs.aggregation``
strategy (FedAvg: w + Δ̄; FedAvgM with a server learning rate is η_g).

State (version, weights, the fold's checkpoint, the strategy's state, counters) serialises to
bytes with a SHA-256 trailer, so a restarted aggregator resumes with the buffer it had.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np

from jobs.aggregation import FedAvg, RejectionCode, StreamingFold, UpdateRejected

_MAGIC = b"CCFBUF01"
_DIGEST_BYTES = 32


class ServerStrategy(Protocol):
    """What ``jobs.aggregation`` strategies offer: a step on the mean delta and their state."""

    def step(self, *, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray: ...

    def state_bytes(self) -> bytes: ...

    def load_state(self, data: bytes) -> None: ...


class Weighting(StrEnum):
    CONSTANT = "constant"
    POLYNOMIAL = "polynomial"
    HINGE = "hinge"


@dataclass(frozen=True)
class StalenessPolicy:
    """The staleness bound and discount: ``weight(τ)`` is s(τ), ``None`` beyond the bound."""

    max_staleness: int = 10
    weighting: Weighting = Weighting.POLYNOMIAL
    exponent: float = 0.5  # a of the polynomial and of the hinge's slope
    hinge_after: int = 4  # b of the hinge

    def __post_init__(self) -> None:
        if self.max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")
        if self.exponent < 0.0:
            raise ValueError("exponent must be >= 0")

    def weight(self, staleness: int) -> float | None:
        """s(τ) for an update of staleness τ, or None when it is too stale to fold."""
        if staleness < 0:
            raise ValueError("staleness must be >= 0 (an update from a future version?)")
        if staleness > self.max_staleness:
            return None
        if self.weighting == Weighting.CONSTANT:
            return 1.0
        if self.weighting == Weighting.POLYNOMIAL:
            return float((1.0 + staleness) ** -self.exponent)
        if staleness <= self.hinge_after:
            return 1.0
        return 1.0 / (self.exponent * (staleness - self.hinge_after) + 1.0)


class Outcome(StrEnum):
    FOLDED = "folded"
    STALE = "stale"  # beyond the staleness bound: dropped
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class AsyncDecision:
    """What happened to one update; ``new_version`` is set when it completed a buffer."""

    outcome: Outcome
    staleness: int
    weight: float
    new_version: int | None = None


@dataclass
class _Counters:
    version: int = 0
    buffer_examples: float = 0.0
    buffer_staleness_sum: int = 0
    folded_total: int = 0
    stale_dropped: int = 0
    seen_ids: list[str] = field(default_factory=list)  # ids of emitted buffers (idempotence)


def buffer_mean(fold: StreamingFold, *, examples: float, normalize: bool = False) -> np.ndarray:
    """A full buffer's step direction, f32[d]: FedBuff's Σ n_k s(τ_k) Δ_k / Σ n_k over the
    ``examples`` Σ n_k of its updates (staleness shortens the step), or with ``normalize`` the
    plain weighted mean Σ n_k s(τ_k) Δ_k / Σ n_k s(τ_k)."""
    mean = fold.finish()
    if normalize:
        return mean
    # FedBuff divides the discounted sum by the examples, not by the discounted weights.
    scale = fold.total_weight / examples
    return (mean.astype(np.float64) * scale).astype(np.float32)


class BufferedAsyncServer:
    """The FedBuff server: ``submit`` updates as they arrive, read ``weights`` / ``version``.

    ``weights`` is the current global model (f32[d]); a client that fetches it records
    ``version`` as its base. Not thread-safe: serialise submissions per job, as for folds.
    """

    def __init__(
        self,
        weights: np.ndarray,
        *,
        buffer_size: int,
        staleness: StalenessPolicy | None = None,
        strategy: ServerStrategy | None = None,
        normalize: bool = False,
        max_norm: float | None = None,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.weights = np.array(weights, dtype=np.float32, copy=True)
        self.buffer_size = buffer_size
        self.staleness = staleness or StalenessPolicy()
        self.strategy: ServerStrategy = strategy or FedAvg()
        self.normalize = normalize
        self.max_norm = max_norm
        self._fold = StreamingFold(self.weights.shape[0])
        self._counters = _Counters()
        self._emitted_ids: set[str] = set()

    @property
    def version(self) -> int:
        return self._counters.version

    @property
    def buffered(self) -> int:
        """Updates in the current buffer."""
        return self._fold.count

    @property
    def stale_dropped(self) -> int:
        return self._counters.stale_dropped

    @property
    def folded_total(self) -> int:
        return self._counters.folded_total

    def submit(
        self, update_id: str, delta: np.ndarray, *, examples: int, base_version: int
    ) -> AsyncDecision:
        """Fold one client delta (f32[d], trained from ``base_version``), or drop it as stale.

        Raises ``UpdateRejected`` (nothing changes) for an invalid update. Idempotent per id:
        an id already folded, in this buffer or an emitted one, is a ``DUPLICATE``.
        """
        staleness = self.version - base_version
        if self._fold.has_folded(update_id) or update_id in self._emitted_ids:
            return AsyncDecision(Outcome.DUPLICATE, staleness, 0.0)
        if staleness < 0:
            raise UpdateRejected(
                RejectionCode.MALFORMED, f"base version {base_version} is in the future"
            )
        discount = self.staleness.weight(staleness)
        if discount is None:
            self._counters.stale_dropped += 1
            return AsyncDecision(Outcome.STALE, staleness, 0.0)
        weight = examples * discount
        self._fold.fold(update_id, delta, weight, max_norm=self.max_norm)
        self._counters.buffer_examples += examples
        self._counters.buffer_staleness_sum += staleness
        self._counters.folded_total += 1
        if self._fold.count < self.buffer_size:
            return AsyncDecision(Outcome.FOLDED, staleness, weight)
        return AsyncDecision(Outcome.FOLDED, staleness, weight, new_version=self._emit())

    def _emit(self) -> int:
        mean = buffer_mean(
            self._fold, examples=self._counters.buffer_examples, normalize=self.normalize
        )
        self.weights = self.strategy.step(weights=self.weights, mean_delta=mean)
        self._emitted_ids |= self._fold.folded_ids
        self._fold = StreamingFold(self.weights.shape[0])
        self._counters.version += 1
        self._counters.buffer_examples = 0.0
        self._counters.buffer_staleness_sum = 0
        return self._counters.version

    def checkpoint(self) -> bytes:
        """The exact state: counters, emitted ids, weights, strategy state, fold checkpoint."""
        counters = asdict(self._counters)
        counters["seen_ids"] = sorted(self._emitted_ids)
        meta = {
            "counters": counters,
            "buffer_size": self.buffer_size,
            "normalize": self.normalize,
            "max_norm": self.max_norm,
            "staleness": {**asdict(self.staleness), "weighting": str(self.staleness.weighting)},
        }
        sections = [
            json.dumps(meta, sort_keys=True).encode(),
            self.weights.astype("<f4").tobytes(),
            self.strategy.state_bytes(),
            self._fold.checkpoint() or b"",
        ]
        body = _MAGIC + struct.pack("<4Q", *(len(s) for s in sections)) + b"".join(sections)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def restore(cls, data: bytes, *, strategy: ServerStrategy | None = None) -> BufferedAsyncServer:
        """Rebuild from ``checkpoint()``; pass a fresh strategy object of the same kind."""
        if len(data) < len(_MAGIC) + 32 + _DIGEST_BYTES or data[: len(_MAGIC)] != _MAGIC:
            raise ValueError("not a buffered-async checkpoint")
        body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
        if hashlib.sha256(body).digest() != digest:
            raise ValueError("checkpoint digest mismatch")
        lengths = struct.unpack_from("<4Q", body, len(_MAGIC))
        offset = len(_MAGIC) + 32
        if offset + sum(lengths) != len(body):
            raise ValueError("checkpoint is truncated")
        parts = []
        for length in lengths:
            parts.append(body[offset : offset + length])
            offset += length
        meta = json.loads(parts[0])
        staleness = dict(meta["staleness"])
        staleness["weighting"] = Weighting(staleness["weighting"])
        server = cls(
            np.frombuffer(parts[1], dtype="<f4"),
            buffer_size=meta["buffer_size"],
            staleness=StalenessPolicy(**staleness),
            strategy=strategy,
            normalize=meta["normalize"],
            max_norm=meta["max_norm"],
        )
        server.strategy.load_state(parts[2])
        server._fold = StreamingFold.restore(parts[3])
        counters = meta["counters"]
        server._emitted_ids = set(counters.pop("seen_ids"))
        server._counters = _Counters(**counters)
        return server
