"""The worker consumer's FL round invites: sent once per connection, including the open rounds'
invites a resumed worker has not answered (an invite pushed from another process, or lost on
the way, would otherwise wait for nobody)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from jobs import fl_shards, protocol

logger = logging.getLogger(__name__)


class RoundInviteMixin:
    """Mixed into ``WorkerConsumer`` (which provides ``worker_id``, ``released``,
    ``invites_sent`` and ``send_message``)."""

    worker_id: Any
    released: bool
    invites_sent: set[int]
    send_message: Any  # GuardedConsumer.send_message (after this class in the MRO)

    async def invites_send(self, invites: list[dict[str, Any]]) -> None:
        """Send the open rounds' invites this worker has not had on this connection (an invite
        pushed from another process, or lost on the way, would otherwise wait for nobody)."""
        if self.worker_id is None or self.released:
            return
        for invite in invites:
            if invite.get("participation") not in self.invites_sent:
                await self.worker_round_invite(invite)

    async def worker_round_invite(self, event: dict[str, Any]) -> None:
        deadline = datetime.fromisoformat(event["deadline"])
        left_ms = int((deadline - datetime.now(UTC)).total_seconds() * 1000)
        try:
            # An analytics round names its kernel in the query instead of a model.
            kernel = (event.get("analytics") or event["model"])["kernel"]
            kernel_sha256 = fl_shards.training_kernel_sha256(kernel)
        except (OSError, KeyError):  # no build of that kernel here: the invitee drops out
            logger.exception("round invite without a built kernel: %s", event.get("job"))
            return
        await self.send_message(
            protocol.round_invite(event=event, kernel_sha256=kernel_sha256, deadline_ms=left_ms)
        )
        self.invites_sent.add(event.get("participation"))
