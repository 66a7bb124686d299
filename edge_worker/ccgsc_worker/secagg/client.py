"""The client side of SecAgg+ (shared by the edge worker and the server): the round's public
parameters and one client's state machine over plain dict messages.

Phases (Bonawitz et al. 2017, with Bell et al. 2020's neighbour graph):
  0 advertise keys   client → server: two X25519 public keys (one to encrypt shares, one to mask)
  1 share keys       client → server: per neighbour, AES-GCM(shares of the self-mask seed b and
                     of the masking private key); the server only relays the ciphertexts
  2 masked input     client → server: y = x + PRG(b) + Σ_j ±PRG(k_ij) in Z_2^32
  3 unmask           server → clients: the alive and dropped sets, fixed once; each client
                     answers with b-shares of alive neighbours and key shares of dropped ones

The server's side is ``jobs.secagg.protocol``; this module is the one implementation of the
client, imported there (the server reconstructs masks with the same key derivation).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np

from ccgsc_worker.secagg import primitives as p
from ccgsc_worker.secagg.graph import default_threshold, neighbour_count, neighbours


class RoundAborted(Exception):
    """The round cannot finish securely; nothing about any input is revealed."""


class RequestRefused(Exception):
    """A client refuses a server request that would let the server learn an input."""


@dataclass(frozen=True)
class RoundConfig:
    """Public parameters every participant of one secure-aggregation round agrees on.

    client_ids are the selected cohort (distinct integers in 1..2^32 − 1, which double as the
    Shamir x-coordinates); dimension counts uint32 coordinates. k defaults (−1) to
    2·⌈log2 n⌉ or the full graph, threshold (0) to ⌊k/2⌋ + 1; see docs/security.md.
    """

    job: str
    round_number: int
    session_id: bytes
    graph_seed: bytes
    client_ids: tuple[int, ...]
    dimension: int
    threshold: int = 0
    k: int = -1

    def __post_init__(self) -> None:
        if len(set(self.client_ids)) != len(self.client_ids):
            raise ValueError("client ids must be distinct")
        if any(not 0 < i < 2**32 for i in self.client_ids):
            raise ValueError("client ids are in 1..2^32 − 1")
        if self.k < 0:
            object.__setattr__(self, "k", neighbour_count(len(self.client_ids)))
        if self.threshold <= 0:
            object.__setattr__(self, "threshold", default_threshold(self.k))
        if not 1 <= self.threshold <= max(1, self.k):
            raise ValueError(f"threshold {self.threshold} outside 1..k={self.k}")

    def graph(self) -> dict[int, frozenset[int]]:
        """Each client's neighbours, derived from the public seed (computed once per config)."""
        return self._graph

    @functools.cached_property
    def _graph(self) -> dict[int, frozenset[int]]:
        return neighbours(self.client_ids, self.graph_seed, self.k)

    def pair_key(self, *, shared: bytes, id_a: int, id_b: int, label: bytes, phase: int) -> bytes:
        """HKDF of an X25519 shared secret bound to this session, pair, job, round and phase."""
        info = p.derivation_info(
            label=label,
            id_a=id_a,
            id_b=id_b,
            job=self.job,
            round_number=self.round_number,
            phase=phase,
        )
        return p.derive_key(shared=shared, session_id=self.session_id, info=info)


def pair_mask_key(
    config: RoundConfig, private: bytes, me: int, peer_public: bytes, peer: int
) -> bytes:
    """The pairwise mask key of me and peer, from my masking private key."""
    return config.pair_key(
        shared=p.agree(private, peer_public),
        id_a=me,
        id_b=peer,
        label=p.LABEL_PAIR_MASK,
        phase=p.PHASE_MASKED_INPUT,
    )


def pair_mask_sign(me: int, peer: int) -> int:
    """+1 when the lower id adds the pairwise mask, −1 for the higher id, so pairs cancel."""
    return 1 if me < peer else -1


@dataclass
class SecAggClient:
    """One client's side of a round; call the four phase methods in order."""

    config: RoundConfig
    client_id: int
    random_bytes: p.RandomBytes = os.urandom
    phase: str = "advertise"
    # Secrets never appear in repr (and so not in logs or tracebacks).
    _cipher_private: bytes = field(default=b"", init=False, repr=False)
    _mask_private: bytes = field(default=b"", init=False, repr=False)
    _self_seed: bytes = field(default=b"", init=False, repr=False)
    _neighbours: frozenset[int] = field(default=frozenset(), init=False, repr=False)
    _peer_keys: dict[int, dict[str, bytes]] = field(default_factory=dict, init=False, repr=False)
    _peer_shares: dict[int, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)
    _masking_peers: frozenset[int] = field(default=frozenset(), init=False, repr=False)

    def _expect(self, phase: str) -> None:
        if self.phase != phase:
            raise RequestRefused(f"request for phase {phase!r} while in {self.phase!r}")

    def advertise_keys(self) -> dict:
        """Phase 0: two fresh public keys."""
        self._expect("advertise")
        if self.client_id not in self.config.client_ids:
            raise RequestRefused("not in this round's cohort")
        self._neighbours = self.config.graph()[self.client_id]
        self._cipher_private, cipher_public = p.keypair_generate(self.random_bytes)
        self._mask_private, mask_public = p.keypair_generate(self.random_bytes)
        self.phase = "share"
        return {
            "client_id": self.client_id,
            "cipher_public": cipher_public,
            "mask_public": mask_public,
        }

    def share_keys(self, public_keys: dict[int, dict[str, bytes]]) -> dict:
        """Phase 1: Shamir-share b and the masking key among the neighbours that advertised."""
        self._expect("share")
        holders = sorted(public_keys)
        if not set(holders) <= self._neighbours:
            raise RequestRefused("public keys of clients that are not my neighbours")
        if len(holders) < self.config.threshold:
            raise RequestRefused(f"only {len(holders)} neighbours, threshold is t")
        self._peer_keys = dict(public_keys)
        self._self_seed = self.random_bytes(p.KEY_BYTES)
        shares = p.shamir_share(
            [self._self_seed, self._mask_private],
            holders,
            self.config.threshold,
            self.random_bytes,
        )
        ciphertexts = {}
        for row, holder in enumerate(holders):
            key = self.config.pair_key(
                shared=p.agree(self._cipher_private, public_keys[holder]["cipher_public"]),
                id_a=self.client_id,
                id_b=holder,
                label=p.LABEL_SHARE_KEY,
                phase=p.PHASE_SHARE_KEYS,
            )
            plaintext = p.share_to_bytes(shares[row, 0]) + p.share_to_bytes(shares[row, 1])
            ciphertexts[holder] = p.encrypt_shares(
                key=key,
                sender=self.client_id,
                receiver=holder,
                job=self.config.job,
                round_number=self.config.round_number,
                plaintext=plaintext,
            )
        self.phase = "masked_input"
        return {"client_id": self.client_id, "ciphertexts": ciphertexts}

    def masked_input(self, ciphertexts: dict[int, bytes], encoded: np.ndarray) -> dict:
        """Phase 2: decrypt the shares held for neighbours and upload the masked input.

        ciphertexts: sender id → bytes addressed to me, from the neighbours that shared.
        encoded: shape (dimension,), uint32 (see encoding.encode). The input is not modified.
        """
        self._expect("masked_input")
        senders = sorted(ciphertexts)
        if not set(senders) <= set(self._peer_keys):
            raise RequestRefused("shares from clients that did not advertise to me")
        if len(senders) < self.config.threshold:
            raise RequestRefused(f"only {len(senders)} neighbours shared, threshold is t")
        encoded = np.asarray(encoded)
        if encoded.dtype != np.uint32 or encoded.shape != (self.config.dimension,):
            raise ValueError(f"encoded input must be uint32 of shape ({self.config.dimension},)")
        for sender in senders:
            key = self.config.pair_key(
                shared=p.agree(self._cipher_private, self._peer_keys[sender]["cipher_public"]),
                id_a=self.client_id,
                id_b=sender,
                label=p.LABEL_SHARE_KEY,
                phase=p.PHASE_SHARE_KEYS,
            )
            plaintext = p.decrypt_shares(
                key=key,
                sender=sender,
                receiver=self.client_id,
                job=self.config.job,
                round_number=self.config.round_number,
                ciphertext=ciphertexts[sender],
            )
            half = p.SHARE_BYTES
            self._peer_shares[sender] = (
                p.share_from_bytes(plaintext[:half]),
                p.share_from_bytes(plaintext[half:]),
            )
        self._masking_peers = frozenset(senders)
        keys, signs = [self._self_seed], [1]
        for peer in senders:
            keys.append(
                pair_mask_key(
                    self.config,
                    self._mask_private,
                    self.client_id,
                    self._peer_keys[peer]["mask_public"],
                    peer,
                )
            )
            signs.append(pair_mask_sign(self.client_id, peer))
        masked = encoded.copy()
        p.add_masks_inplace(masked, keys, signs)
        self.phase = "unmask"
        return {"client_id": self.client_id, "masked": masked}

    def unmask(self, alive: list[int], dropped: list[int]) -> dict:
        """Phase 3: b-shares of alive neighbours, key shares of dropped ones.

        Refused when the sets overlap (the server would get both secrets of one client and so
        its input), when I am not alive, or when fewer than t of my neighbours are alive.
        """
        self._expect("unmask")
        alive_set, dropped_set = set(alive), set(dropped)
        if alive_set & dropped_set:
            raise RequestRefused("alive and dropped sets overlap")
        if self.client_id not in alive_set:
            raise RequestRefused("I am not in the alive set")
        if len(alive_set & self._neighbours) < self.config.threshold:
            raise RequestRefused("fewer than t of my neighbours are alive")
        shares = {}
        for peer in sorted(self._masking_peers):
            if peer in alive_set:
                shares[peer] = p.share_to_bytes(self._peer_shares[peer][0])
            elif peer in dropped_set:
                shares[peer] = p.share_to_bytes(self._peer_shares[peer][1])
        self.phase = "done"
        return {"client_id": self.client_id, "shares": shares}
