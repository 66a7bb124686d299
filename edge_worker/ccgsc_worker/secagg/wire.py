"""A SecAgg+ client driven by the protocol's ``secagg_*`` messages: pure, no I/O.

``WireClient`` wraps ``SecAggClient`` for one participation of a secure round. It takes the
``secagg`` block of the ``round_invite`` and each server message, and returns the messages to
send; ``mask_update`` turns the trained update (f32[d]) into the masked input (u32[d]) that is
uploaded through the ordinary chunked upload. Bytes travel as unpadded base64url. The browser
twin is ``static/worker_frontend/secagg-round.js`` (same messages, same bytes).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ccgsc_worker import protocol as proto
from ccgsc_worker.dp import add_share, noise_share
from ccgsc_worker.secagg import primitives as p
from ccgsc_worker.secagg.client import RequestRefused, RoundConfig, SecAggClient
from ccgsc_worker.secagg.encoding import encode


def b64encode(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Inverse of b64encode; raises ValueError on anything else."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not unpadded base64url") from exc


def round_config(*, job: str, round_number: int, block: Mapping[str, Any]) -> RoundConfig:
    """The round's public parameters from an invite's ``secagg`` block (clients are 1..n)."""
    return RoundConfig(
        job=job,
        round_number=round_number,
        session_id=b64decode(block["session"]),
        graph_seed=b64decode(block["graph_seed"]),
        client_ids=tuple(range(1, int(block["clients"]) + 1)),
        dimension=int(block.get("dimension", 0)),
        threshold=int(block["threshold"]),
    )


class WireClient:
    """One participation's side of a secure round, message in, message out.

    Call ``advertise`` on the invite, ``on_keys`` on ``secagg_keys``, ``on_ciphertexts`` on
    ``secagg_ciphertexts``, ``mask_update`` once trained and the ciphertexts are in, and
    ``on_unmask`` on ``secagg_unmask``. Any refusal raises ``RequestRefused`` (the client then
    stays silent: the server counts it as a dropout) and ``forget`` drops every secret.
    """

    def __init__(
        self,
        *,
        job: str,
        round_number: int,
        participation: int,
        block: Mapping[str, Any],
        dimension: int,
        random_bytes: p.RandomBytes = os.urandom,
    ) -> None:
        self.participation = participation
        self.scale = float(block["scale"])
        self.bound = float(block["bound"])
        self.noise: Mapping[str, Any] | None = block.get("noise")
        self.random_bytes = random_bytes
        config = round_config(
            job=job, round_number=round_number, block={**block, "dimension": dimension}
        )
        self.client = SecAggClient(config, int(block["client"]), random_bytes)
        self._ciphertexts: dict[int, bytes] | None = None

    @property
    def phase(self) -> str:
        """The client's phase: advertise, share, masked_input, unmask, done."""
        return self.client.phase

    @property
    def ready_to_mask(self) -> bool:
        """The neighbours' ciphertexts arrived: the update can be masked."""
        return self._ciphertexts is not None and self.client.phase == "masked_input"

    def advertise(self) -> dict[str, Any]:
        """Phase 0: the ``secagg_advertise`` message."""
        keys = self.client.advertise_keys()
        return proto.secagg_advertise(
            self.participation, b64encode(keys["cipher_public"]), b64encode(keys["mask_public"])
        )

    def on_keys(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Phase 1: the neighbours' keys → the ``secagg_share_keys`` message."""
        keys = {
            int(item["client"]): {
                "cipher_public": _key(item["cipher_public"]),
                "mask_public": _key(item["mask_public"]),
            }
            for item in message["keys"]
        }
        if len(keys) != len(message["keys"]):
            raise RequestRefused("a neighbour's keys appear twice")
        shares = self.client.share_keys(keys)
        return proto.secagg_share_keys(
            self.participation,
            [
                {"client": client, "ciphertext": b64encode(ciphertext)}
                for client, ciphertext in sorted(shares["ciphertexts"].items())
            ],
        )

    def on_ciphertexts(self, message: Mapping[str, Any]) -> None:
        """Phase 2 begins: keep the ciphertexts addressed to me until the update is ready."""
        if self.client.phase != "masked_input":
            raise RequestRefused(f"ciphertexts while in {self.client.phase!r}")
        ciphertexts = {int(i["client"]): b64decode(i["ciphertext"]) for i in message["ciphertexts"]}
        if len(ciphertexts) != len(message["ciphertexts"]):
            raise RequestRefused("a neighbour's ciphertext appears twice")
        self._ciphertexts = ciphertexts

    def mask_update(self, update: np.ndarray) -> np.ndarray:
        """Phase 2: clip, encode, add the distributed-DP share when the invite asks for one, and
        mask the update. update: f32[d] → masked u32[d]."""
        if self._ciphertexts is None:
            raise RequestRefused("no ciphertexts yet")
        encoded = encode(update, scale=self.scale, bound=self.bound, random_bytes=self.random_bytes)
        if self.noise is not None:
            share = noise_share(
                encoded.size,
                mechanism=str(self.noise["mechanism"]),
                variance=float(self.noise["variance"]),
                random_bytes=self.random_bytes,
            )
            encoded = add_share(encoded, share)
        masked = self.client.masked_input(self._ciphertexts, encoded)["masked"]
        self._ciphertexts = None
        return masked

    def on_unmask(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Phase 3: the fixed alive/dropped sets → the ``secagg_unmask_shares`` message (the
        client checks they are disjoint and that at least t neighbours are alive)."""
        answer = self.client.unmask(list(message["alive"]), list(message["dropped"]))
        return proto.secagg_unmask_shares(
            self.participation,
            [
                {"client": client, "share": b64encode(share)}
                for client, share in sorted(answer["shares"].items())
            ],
        )

    def forget(self) -> None:
        """Drop every secret (the round ended or was aborted)."""
        self._ciphertexts = None
        self.client = SecAggClient(self.client.config, self.client.client_id, self.random_bytes)
        self.client.phase = "done"


def _key(text: str) -> bytes:
    key = b64decode(text)
    if len(key) != p.KEY_BYTES:
        raise RequestRefused("public keys are 32 bytes")
    return key


def masked_body(header: bytes, masked: np.ndarray) -> bytes:
    """The upload body of a masked update: the 32-byte metrics header, then u32[d] LE."""
    return header + np.asarray(masked, dtype="<u4").tobytes()
