"""Secure FL rounds on the edge worker: the SecAgg+ client of each participation, on the wire.

``SecureRounds`` keeps one ``WireClient`` per participation of a secure round. The driver calls
``begin`` with the invite (→ the ``secagg_advertise`` to send), ``handle`` with each phase
message (→ the answer to send, if any), and ``wait_ciphertexts`` before masking the trained
update. A refused request (sets that overlap, too few neighbours, a bad ciphertext) or an abort
forgets the round's secrets and sends nothing: the server counts the client as a dropout. A
request that arrives again (re-sent after a reconnect) gets the answer the first one got.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ccgsc_worker.secagg.client import RequestRefused
from ccgsc_worker.secagg.wire import WireClient, masked_body

log = logging.getLogger("ccgsc_worker")

METRICS_BYTES = 32
_NORM_OFFSET = 24  # the header's f64 update norm: zeroed, it would describe one client's update


class SecureRounds:
    """The secure-round clients of one worker, keyed by participation."""

    def __init__(self) -> None:
        self._clients: dict[int, WireClient] = {}
        self._ready: dict[int, asyncio.Event] = {}
        self._ended: set[int] = set()
        # Each request's answer, per participation: the server sends a request again to a
        # worker that reconnected mid-phase, and the answer it gets is the first one (answering
        # from the client again would be refused: it has moved to the next phase).
        self._answers: dict[int, dict[str, dict[str, Any] | None]] = {}

    def begin(self, invite: Mapping[str, Any]) -> dict[str, Any]:
        """A secure invite: a fresh client and its ``secagg_advertise`` message."""
        participation = int(invite["participation"])
        client = WireClient(
            job=str(invite["job"]),
            round_number=int(invite["round"]),
            participation=participation,
            block=invite["secagg"],
            dimension=int(
                invite["analytics"]["dimension"]
                if "analytics" in invite
                else invite["model"]["parameters"]
            ),
        )
        self._clients[participation] = client
        self._ready[participation] = asyncio.Event()
        return client.advertise()

    def handle(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        """One phase message → the message to send back (None: nothing to send)."""
        participation = int(message["participation"])
        client = self._clients.get(participation)
        if client is None:
            return None
        kind = message["type"]
        answers = self._answers.setdefault(participation, {})
        if kind in answers:  # sent again after a reconnect: the answer may have been lost
            return answers[kind]
        try:
            if kind == "secagg_keys":
                answers[kind] = client.on_keys(message)
                return answers[kind]
            if kind == "secagg_ciphertexts":
                client.on_ciphertexts(message)
                answers[kind] = None
                self._ready[participation].set()
                return None
            if kind == "secagg_unmask":
                answer = client.on_unmask(message)
                self.end(participation)
                return answer
            log.warning("secure round %s aborted: %s", participation, message.get("reason"))
        except (RequestRefused, ValueError, KeyError) as exc:
            log.warning("secure round %s: refused %s: %s", participation, kind, exc)
        self.end(participation)
        return None

    async def wait_ciphertexts(self, participation: int, timeout: float) -> bool:
        """Wait until the update can be masked; False on timeout or when the round ended."""
        event = self._ready.get(participation)
        if event is None:
            return False
        try:
            await asyncio.wait_for(event.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        client = self._clients.get(participation)
        return client is not None and client.ready_to_mask

    def mask(self, participation: int, body: bytes) -> bytes:
        """The upload body of a trained update (or an analytics vector), masked: header (norm
        zeroed) ‖ u32[d]."""
        client = self._clients[participation]
        update = np.frombuffer(body, dtype="<f4", offset=METRICS_BYTES)
        header = bytearray(body[:METRICS_BYTES])
        header[_NORM_OFFSET:METRICS_BYTES] = bytes(METRICS_BYTES - _NORM_OFFSET)
        return masked_body(bytes(header), client.mask_update(update))

    def end(self, participation: int) -> None:
        """Forget a round's client and its secrets; a waiting masker gives up."""
        self._answers.pop(participation, None)
        client = self._clients.pop(participation, None)
        if client is not None:
            client.forget()
        event = self._ready.pop(participation, None)
        if event is not None:
            event.set()
