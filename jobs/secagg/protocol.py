"""SecAgg+ server as a pure state machine over plain dict messages (the client is
``ccgsc_worker.secagg.client``, re-exported here).

Phases (Bonawitz et al. 2017, with Bell et al. 2020's neighbour graph):
  0 advertise keys   client → server: two X25519 public keys (one to encrypt shares, one to mask)
  1 share keys       client → server: per neighbour, AES-GCM(shares of the self-mask seed b and
                     of the masking private key); the server only relays the ciphertexts
  2 masked input     client → server: y = x + PRG(b) + Σ_j ±PRG(k_ij) in Z_2^32
  3 unmask           server → clients: the alive and dropped sets, fixed once; each client
                     answers with b-shares of alive neighbours and key shares of dropped ones

Set names follow the paper: U1 advertised, U2 shared, U3 sent a masked input, U4 answered the
unmask request. The server aborts (RoundAborted) as soon as a client it must unmask has fewer
than t neighbours left. Unmasking is split into secret reconstruction (once, cheap) and mask
removal by coordinate range (unmask_range), so several workers can share the expensive part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ccgsc_worker.secagg import primitives as p
from ccgsc_worker.secagg.client import (
    RequestRefused,
    RoundAborted,
    RoundConfig,
    SecAggClient,
    pair_mask_key,
    pair_mask_sign,
)

__all__ = [
    "RequestRefused",
    "RoundAborted",
    "RoundConfig",
    "SecAggClient",
    "SecAggServer",
    "UnmaskPlan",
    "pair_mask_key",
    "pair_mask_sign",
    "unmask_range",
]


@dataclass(frozen=True)
class UnmaskPlan:
    """What removing the masks needs, once secrets are reconstructed: picklable, no state.

    self_mask_keys: the survivors' self-mask seeds (subtracted); pair_masks: (key, sign) for
    each dropped client and surviving neighbour, as the dropped client would have applied it.
    """

    dimension: int
    self_mask_keys: tuple[bytes, ...] = field(repr=False)
    pair_masks: tuple[tuple[bytes, int], ...] = field(repr=False)


def unmask_range(
    plan: UnmaskPlan, masked_sum: np.ndarray, *, start: int = 0, stop: int | None = None
) -> np.ndarray:
    """Coordinates [start, stop) of the aggregate from the same range of Σ masked inputs.

    masked_sum: the full (dimension,) uint32 sum, or exactly its [start, stop) slice.
    Returns (stop − start,) uint32; the input is not modified.
    """
    stop = plan.dimension if stop is None else stop
    length = stop - start
    if masked_sum.shape[0] == plan.dimension and length != plan.dimension:
        masked_sum = masked_sum[start:stop]
    if masked_sum.shape != (length,):
        raise ValueError("masked_sum must be the full sum or the requested range")
    result = np.array(masked_sum, dtype=np.uint32, copy=True)
    keys = [*plan.self_mask_keys, *(key for key, _ in plan.pair_masks)]
    signs = [-1] * len(plan.self_mask_keys) + [sign for _, sign in plan.pair_masks]
    p.add_masks_inplace(result, keys, signs, start=start)
    return result


@dataclass
class SecAggServer:
    """The server's side of a round. It collects each phase, then close_* fixes the set of
    clients that made it (once) and returns what to send next, or raises RoundAborted."""

    config: RoundConfig
    phase: str = "advertise"
    abort_reason: str = ""
    advertised: dict[int, dict[str, bytes]] = field(default_factory=dict)
    shared: dict[int, dict[int, bytes]] = field(default_factory=dict)
    masked_sum: np.ndarray | None = None
    masked_from: set[int] = field(default_factory=set)
    unmask_shares: dict[int, dict[int, bytes]] = field(default_factory=dict)
    alive: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    plan: UnmaskPlan | None = None
    _graph: dict[int, frozenset[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._graph = self.config.graph()

    def _expect(self, phase: str) -> None:
        if self.phase == "aborted":
            raise RoundAborted(self.abort_reason)
        if self.phase != phase:
            raise ValueError(f"message for phase {phase!r} while in {self.phase!r}")

    def _abort(self, reason: str) -> RoundAborted:
        self.phase = "aborted"
        self.abort_reason = reason
        return RoundAborted(reason)

    def _check_neighbours(self, clients: set[int], present: set[int], what: str) -> None:
        t = self.config.threshold
        for client in sorted(clients):
            count = len(self._graph[client] & present)
            if count < t:
                raise self._abort(f"client {client} has {count} {what} neighbours, t is {t}")

    def _member(self, message: dict) -> int:
        client = int(message["client_id"])
        if client not in self._graph:
            raise ValueError(f"client {client} is not in the cohort")
        return client

    # Phase 0
    def receive_advertisement(self, message: dict) -> None:
        """Store a client's two public keys (a repeat is ignored)."""
        self._expect("advertise")
        client = self._member(message)
        keys = {"cipher_public": message["cipher_public"], "mask_public": message["mask_public"]}
        if any(len(v) != 32 for v in keys.values()):
            raise ValueError("public keys are 32 bytes")
        self.advertised.setdefault(client, keys)

    def close_advertise(self) -> dict[int, dict[int, dict[str, bytes]]]:
        """Fix U1; return, per client in U1, the public keys of its neighbours in U1."""
        self._expect("advertise")
        u1 = set(self.advertised)
        self._check_neighbours(u1, u1, "advertising")
        self.phase = "share"
        return {i: {j: self.advertised[j] for j in sorted(self._graph[i] & u1)} for i in u1}

    # Phase 1
    def receive_shares(self, message: dict) -> None:
        """Store a client's encrypted shares, one per neighbour in U1."""
        self._expect("share")
        client = self._member(message)
        if client not in self.advertised:
            raise ValueError(f"client {client} did not advertise")
        expected = self._graph[client] & set(self.advertised)
        if set(message["ciphertexts"]) != expected:
            raise ValueError(f"client {client} must send one ciphertext per advertised neighbour")
        self.shared.setdefault(client, dict(message["ciphertexts"]))

    def close_share(self) -> dict[int, dict[int, bytes]]:
        """Fix U2; return, per client in U2, the ciphertexts addressed to it from U2."""
        self._expect("share")
        u2 = set(self.shared)
        self._check_neighbours(u2, u2, "sharing")
        self.phase = "masked_input"
        return {i: {j: self.shared[j][i] for j in sorted(self._graph[i] & u2)} for i in sorted(u2)}

    # Phase 2
    def receive_masked_input(self, message: dict) -> None:
        """Add a client's masked input into the running sum (uint32, wrapping)."""
        self._expect("masked_input")
        client = self._member(message)
        if client not in self.shared or client in self.masked_from:
            raise ValueError(f"client {client} did not share, or already sent its input")
        masked = np.asarray(message["masked"])
        if masked.dtype != np.uint32 or masked.shape != (self.config.dimension,):
            raise ValueError("masked input must be uint32 of the round's dimension")
        if self.masked_sum is None:
            self.masked_sum = masked.copy()
        else:
            np.add(self.masked_sum, masked, out=self.masked_sum)
        self.masked_from.add(client)

    def close_masked_input(self) -> dict[str, list[int]]:
        """Fix U3 and the dropped set U2 \\ U3, once; return the unmask request for U3."""
        self._expect("masked_input")
        u3 = set(self.masked_from)
        dropped = set(self.shared) - u3
        self._check_neighbours(u3 | dropped, u3, "surviving")
        self.alive, self.dropped = tuple(sorted(u3)), tuple(sorted(dropped))
        self.phase = "unmask"
        return {"alive": list(self.alive), "dropped": list(self.dropped)}

    # Phase 3
    def receive_unmask(self, message: dict) -> None:
        """Store a surviving client's shares of its neighbours' secrets."""
        self._expect("unmask")
        client = self._member(message)
        if client not in self.masked_from:
            raise ValueError(f"client {client} is not alive")
        shares = message["shares"]
        if not set(shares) <= self._graph[client] & set(self.shared):
            raise ValueError(f"client {client} sent shares for clients it does not hold")
        self.unmask_shares.setdefault(client, dict(shares))

    def close_unmask(self) -> UnmaskPlan:
        """Fix U4, reconstruct b of survivors and masking keys of the dropped; the plan."""
        self._expect("unmask")
        u4 = set(self.unmask_shares)
        t = self.config.threshold
        self._check_neighbours(set(self.alive) | set(self.dropped), u4, "answering")
        alive = set(self.alive)
        self_keys: list[bytes] = []
        pair_masks: list[tuple[bytes, int]] = []
        for client in (*self.alive, *self.dropped):
            holders = sorted(h for h in self._graph[client] & u4 if client in self.unmask_shares[h])
            if len(holders) < t:
                raise self._abort(f"only {len(holders)} shares for client {client}, t is {t}")
            holders = holders[:t]
            values = [p.share_from_bytes(self.unmask_shares[h][client]) for h in holders]
            try:
                secret = p.secret_from_int(p.shamir_reconstruct(holders, values))
            except ValueError as exc:
                raise self._abort(f"shares of client {client} are inconsistent") from exc
            if client in alive:
                self_keys.append(secret)
                continue
            public = self.advertised[client]["mask_public"]
            if p.keypair_from_seed(secret)[1] != public:
                raise self._abort(f"shares of client {client} do not match its public key")
            for peer in sorted(self._graph[client] & alive):
                key = pair_mask_key(
                    self.config, secret, client, self.advertised[peer]["mask_public"], peer
                )
                pair_masks.append((key, pair_mask_sign(client, peer)))
        self.phase = "done"
        self.plan = UnmaskPlan(
            dimension=self.config.dimension,
            self_mask_keys=tuple(self_keys),
            pair_masks=tuple(pair_masks),
        )
        return self.plan

    def aggregate(self, plan: UnmaskPlan) -> np.ndarray:
        """The whole aggregate in one call: (dimension,) uint32 sum of the survivors' inputs."""
        if self.masked_sum is None:
            raise RoundAborted("no masked inputs")
        return unmask_range(plan, self.masked_sum)
