"""The worker consumer's secure-aggregation messages: thin, like the rest of the consumer.

Inbound ``secagg_*`` messages (already validated against their schemas) go to
``fl_secagg.secagg_message_receive``; a refusal is answered with ``secagg_refused`` and changes
nothing. ``worker.secagg`` events from the phase service become the outbound phase messages;
after a hello, the requests of the phases the worker has not answered are sent again (a
reconnect mid-phase would otherwise leave it waiting for a message sent to its old socket); the
hello's own read found them (``fl_secagg_requests``), so a resumed hello costs no query here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async

from jobs import protocol
from jobs.protocol import ProtocolError
from jobs.services.fl_secagg import SecAggRefused, secagg_message_receive


class SecAggConsumerMixin:
    """Mixed into ``WorkerConsumer`` (which provides ``contributor_id`` and ``send_message``)."""

    contributor_id: Any
    worker_id: Any
    send_message: Any  # GuardedConsumer.send_message (after this class in the MRO)

    async def secagg_requests_resend(self, events: list[dict[str, Any]]) -> None:
        """Send again the phase requests this worker's secure rounds wait on it for (read with
        its hello: ``WorkerSession.secagg_requests``)."""
        for event in events:
            await self.worker_secagg(event)

    async def _secagg_receive(self, message: dict[str, Any]) -> None:
        try:
            await database_sync_to_async(secagg_message_receive)(
                contributor_id=self.contributor_id, message=message
            )
        except SecAggRefused as exc:
            raise ProtocolError(exc.code, exc.message, ref=message["type"]) from exc

    async def on_secagg_advertise(self, message: dict[str, Any]) -> None:
        await self._secagg_receive(message)

    async def on_secagg_share_keys(self, message: dict[str, Any]) -> None:
        await self._secagg_receive(message)

    async def on_secagg_unmask_shares(self, message: dict[str, Any]) -> None:
        await self._secagg_receive(message)

    async def worker_secagg(self, event: dict[str, Any]) -> None:
        left_ms = None
        if event.get("deadline"):
            deadline = datetime.fromisoformat(event["deadline"])
            left_ms = int((deadline - datetime.now(UTC)).total_seconds() * 1000)
        await self.send_message(
            protocol.secagg(kind=event["kind"], fields=event["fields"], deadline_ms=left_ms)
        )
