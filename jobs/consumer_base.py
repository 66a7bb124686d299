"""What every WebSocket consumer shares: a per-connection rate limit, the guard that still ends a
socket cleanly after an unexpected failure, and how consumers call services."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from jobs import protocol

logger = logging.getLogger(__name__)


class TokenBucket:
    """Per-connection message rate limit."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.capacity = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


# Dispatch services are safe to run side by side (claims SKIP LOCKED rows, results lock theirs),
# so on PostgreSQL they run on a thread pool rather than Channels' single database thread, which
# the dispatch benchmark showed saturating at a few dozen replicas per second.
def db(function):  # noqa: ANN001, ANN201
    """Run a service from a consumer: in parallel when the database allows it."""
    return database_sync_to_async(
        function, thread_sensitive=not settings.DISPATCH_PARALLEL_DATABASE
    )


class GuardedConsumer(AsyncWebsocketConsumer):
    """A consumer whose unexpected failures still end the socket cleanly.

    Bad input is answered with a documented error, never an exception; this is the net under
    that rule. An exception escaping a handler would end the consumer without running
    ``disconnect`` (Daphne closes with 1011), so a worker would stay marked online: here it is
    logged, answered with ``internal_error`` and close 4011 (a server may not send 1011 itself),
    and the cleanup still runs."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        try:
            await self._handle(message)
        except StopConsumer:
            raise
        except Exception:
            logger.exception("%s failed on %s", type(self).__name__, message.get("type"))
            if message.get("type") == "websocket.disconnect":
                raise StopConsumer from None
            with contextlib.suppress(Exception):
                await self.send_message(self.build_error("internal_error", "server error"))
            try:
                await self.close(code=protocol.CLOSE_INTERNAL_ERROR)
            except Exception:
                logger.exception("%s could not release after a failure", type(self).__name__)

    async def _handle(self, message: dict[str, Any]) -> None:
        """Channels' ``AsyncConsumer.dispatch`` without its hop to the database thread.

        Since Channels 4.2, ``dispatch`` first awaits ``aclose_old_connections()``: a
        ``sync_to_async`` call to Channels' one thread-sensitive thread, for every message a
        consumer gets (each frame, credit, cancel, wake). It closes stale connections of that
        thread only, and our consumers reach the database only through
        ``database_sync_to_async`` (which closes them itself, before and after each call, on the
        thread that holds them) or the flusher's own thread. At 1,000 validated replicas/s,
        dispatching without it cut the Daphnes' CPU per replica by a fifth to a quarter
        (docs/benchmarks.md)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Release first, so a client that sees the close finds its worker already offline."""
        try:
            await self.release()
        finally:
            await super().close(code=code, reason=reason)

    async def send_message(self, message: dict[str, Any]) -> None:
        await self.send(text_data=protocol.encode(message))

    def build_error(self, code: str, message: str, ref: str | None = None) -> dict[str, Any]:
        return protocol.error(code=code, message=message, ref=ref)

    async def release(self) -> None:
        """Undo what the connection holds (idempotent: runs on every way out)."""
