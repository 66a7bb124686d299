"""The only code outside consumers that talks to the channel layer: sends after commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

DISPATCH_GROUP = "dispatch.workers"


def job_group(job_id: uuid.UUID | str) -> str:
    """The channel group of a job's director viewers."""
    return f"job.{job_id}"


# Sends handed to a running event loop, kept until done (the loop holds tasks only weakly).
_in_flight: set[asyncio.Task[None]] = set()


def _send(target: str, message: dict[str, Any], *, group: bool) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    send = layer.group_send if group else layer.send
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    try:
        if loop is None:
            async_to_sync(send)(target, message)
        else:
            # Synchronous code running inside this thread's event loop (async_to_sync cannot
            # block it): the loop sends once it gets control back.
            task = loop.create_task(send(target, message))
            _in_flight.add(task)
            task.add_done_callback(_sent)
    except Exception:  # a lost notification is recovered by polling; never fail the write
        logger.exception("channel layer send to %s failed", target)


def _sent(task: asyncio.Task[None]) -> None:
    _in_flight.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("channel layer send failed", exc_info=task.exception())


def broadcast_on_commit(group: str, message: dict[str, Any]) -> None:
    """Send ``message`` to ``group`` once the current transaction commits."""
    transaction.on_commit(lambda: _send(group, message, group=True))


_collecting = threading.local()


@contextlib.contextmanager
def sends_collected() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Collect, instead of sending, the messages to single consumers that the enclosed
    transaction asks for; the caller delivers them once that transaction committed.

    The dispatch flusher uses it: most of a batch's messages go to sockets of its own process,
    which it reaches directly instead of through Redis, one round trip per message."""
    collected: list[tuple[str, dict[str, Any]]] = []
    previous = getattr(_collecting, "sends", None)
    _collecting.sends = collected
    try:
        yield collected
    finally:
        _collecting.sends = previous


def send_on_commit(channel_name: str, message: dict[str, Any]) -> None:
    """Send ``message`` to one consumer once the current transaction commits."""
    if not channel_name:
        return
    collected = getattr(_collecting, "sends", None)
    if collected is not None:
        collected.append((channel_name, message))
        return
    transaction.on_commit(lambda: _send(channel_name, message, group=False))


def wake_dispatch_on_commit(*, tasks: int | None = None) -> None:
    """Tell idle workers that tasks became dispatchable (``tasks`` of them, when known: a
    process then wakes only that many of its idle consumers)."""
    message: dict[str, Any] = {"type": "dispatch.wake"}
    if tasks is not None:
        message["tasks"] = tasks
    broadcast_on_commit(DISPATCH_GROUP, message)
