"""The per-process flusher: group commit for every worker socket of one Daphne process.

Consumers do not write per message. They hand hellos, results, heartbeats, errors, claims and
disconnects to the process's :class:`Flusher` (an asyncio task on the process's event loop,
started by the first worker consumer that needs it) and await the item's outcome. The flusher takes what arrived
while the previous flush ran, or waits up to ``DISPATCH_FLUSH_MS`` after the first item when it
was idle, and passes up to ``DISPATCH_FLUSH_ITEMS`` items to
:func:`jobs.dispatch.batch.dispatch_batch`: one transaction, on one database thread. Outcomes
are delivered only after that returns, so an acknowledgement always follows the commit.

If the batch fails, each of its items runs again through its per-item service in its own
transaction; an item that fails there too gets its exception (the consumer answers with the
documented error), and the others go on.

Hellos and disconnects ride the same flushes, so a reconnect storm of thousands of sockets
costs a few transactions. Idle consumers, wakes and the re-check are in :mod:`jobs.dispatch.idle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from jobs import dispatch, realtime
from jobs.dispatch.batch import (
    BatchOutcome,
    ClaimItem,
    ErrorItem,
    HeartbeatItem,
    ResultItem,
    dispatch_batch,
)
from jobs.dispatch.batch_sessions import (
    DisconnectItem,
    HelloItem,
    disconnect_alone,
    hello_alone,
)

logger = logging.getLogger(__name__)

_KINDS = (ResultItem, HeartbeatItem, ErrorItem, ClaimItem, HelloItem, DisconnectItem)


def group_commit_enabled() -> bool:
    """Whether worker consumers go through the flusher (PostgreSQL deployments)."""
    return bool(getattr(settings, "DISPATCH_GROUP_COMMIT", False))


def _run_alone(item: Any) -> Any:
    """One item through its per-item service, in its own transaction (the fallback path)."""
    if isinstance(item, ResultItem):
        outcome = dispatch.result_submit(
            contributor_id=item.contributor_id,
            assignment_id=item.assignment_id,
            output=item.output,
            sha256=item.sha256,
            elapsed_ms=item.elapsed_ms,
        )
        if item.refill > 0 and item.worker_id is not None:
            outcome.offers = dispatch.assignment_claim(worker_id=item.worker_id, count=item.refill)
        return outcome
    if isinstance(item, HeartbeatItem):
        return dispatch.assignment_heartbeat(
            worker_id=item.worker_id, assignment_id=item.assignment_id
        )
    if isinstance(item, ErrorItem):
        return dispatch.assignment_error(
            worker_id=item.worker_id,
            assignment_id=item.assignment_id,
            code=item.code,
            message=item.message,
        )
    if isinstance(item, HelloItem):
        return hello_alone(item)
    if isinstance(item, DisconnectItem):
        return disconnect_alone(item)
    return dispatch.assignment_claim(worker_id=item.worker_id, count=item.count)


def flush_sync(items: list[Any]) -> tuple[list[Any], list[tuple[str, dict[str, Any]]]]:
    """Handle ``items`` in one transaction, or one by one if that fails; outcomes in order, and
    the messages for single consumers the committed batch asked for (to deliver now).

    An outcome is the service's return value or the exception the item raised alone."""
    by_kind: dict[type, list[int]] = {kind: [] for kind in _KINDS}
    for index, item in enumerate(items):
        by_kind[type(item)].append(index)
    try:
        with realtime.sends_collected() as sends:
            outcome: BatchOutcome = dispatch_batch(
                results=[items[i] for i in by_kind[ResultItem]],
                heartbeats=[items[i] for i in by_kind[HeartbeatItem]],
                errors=[items[i] for i in by_kind[ErrorItem]],
                claims=[items[i] for i in by_kind[ClaimItem]],
                hellos=[items[i] for i in by_kind[HelloItem]],
                disconnects=[items[i] for i in by_kind[DisconnectItem]],
            )
    except Exception:
        logger.exception("dispatch batch of %d items failed: retrying item by item", len(items))
        if not connection.is_usable():
            connection.close()
        answers: list[Any] = []
        for item in items:
            try:
                answers.append(_run_alone(item))
            except Exception as exc:  # the item's own failure, reported to its socket
                if not isinstance(exc, ValueError):
                    logger.exception("dispatch item failed alone: %s", type(item).__name__)
                answers.append(exc)
        return answers, []
    answers = [None] * len(items)
    for kind, values in (
        (ResultItem, outcome.results),
        (HeartbeatItem, outcome.heartbeats),
        (ErrorItem, outcome.errors),
        (ClaimItem, outcome.claims),
        (HelloItem, outcome.hellos),
        (DisconnectItem, outcome.disconnects),
    ):
        for index, value in zip(by_kind[kind], values, strict=True):
            answers[index] = value
    return answers, sends


# How many flushes a socket's prefetch claim may wait while first claims go ahead of it.
PREFETCH_WAIT_FLUSHES = 2
# A flush takes up to a ``1 / FIRST_CLAIM_TAIL_SHARE`` of its cap in first claims beyond it when
# that leaves no first claim waiting (see ``batch_take``).
FIRST_CLAIM_TAIL_SHARE = 8


def batch_take(
    pending: list[tuple[Any, asyncio.Future, int]], *, max_items: int, flush: int
) -> tuple[list[tuple[Any, asyncio.Future, int]], list[tuple[Any, asyncio.Future, int]]]:
    """The next flush's items and what stays pending: up to ``max_items`` in arrival order,
    except that while sockets' first claims wait, prefetch claims queued fewer than
    ``PREFETCH_WAIT_FLUSHES`` flushes ago stay behind. A job start wakes hundreds of sockets at
    once; the first to be answered ask for their prefetch while the others' first claims are
    still queued, and a flush of both took twice as long, so the last sockets' first
    ``assign`` left one long flush later.

    First claims that would be left over by only a few (up to ``max_items //
    FIRST_CLAIM_TAIL_SHARE``) ride along: a process holding a few more than a multiple of the
    cap of a start's woken sockets otherwise claimed for those few in a flush of their own, after
    the loop had sent the previous flush's ``assign``s, and their first ``assign``s were the
    push's last (``docs/benchmarks.md``). Entries: (item, future, flush number at arrival)."""

    def first_claim(entry: tuple[Any, asyncio.Future, int]) -> bool:
        return isinstance(entry[0], ClaimItem) and not entry[0].prefetch

    def waits(entry: tuple[Any, asyncio.Future, int]) -> bool:
        item, _, arrived = entry
        return (
            isinstance(item, ClaimItem)
            and item.prefetch
            and flush - arrived < PREFETCH_WAIT_FLUSHES
        )

    if not any(first_claim(entry) for entry in pending):
        return pending[:max_items], pending[max_items:]
    batch, rest = [], []
    for entry in pending:
        (rest if waits(entry) or len(batch) >= max_items else batch).append(entry)
    tail = [entry for entry in rest if first_claim(entry)]
    if tail and len(tail) <= max_items // FIRST_CLAIM_TAIL_SHARE:
        batch += tail
        rest = [entry for entry in rest if not first_claim(entry)]
    return batch, rest


class Flusher:
    """Collects items from this process's sockets and flushes them in batches."""

    def __init__(self, *, flush_ms: float, max_items: int) -> None:
        self.flush_s = flush_ms / 1000
        self.max_items = max_items
        self.items: list[tuple[Any, asyncio.Future, int]] = []
        self.arrived = asyncio.Event()
        self.full = asyncio.Event()
        self.local: dict[str, Callable[[dict], Awaitable[None]]] = {}
        self.loop = asyncio.get_running_loop()
        self.runner = self.loop.create_task(self._run(), name="dispatch-flusher")
        self.flushes = 0
        self.deliveries: set[asyncio.Task] = set()
        self.flushed_items = 0
        # Channels' single database thread where the database cannot take parallel threads
        # (in-process tests). Otherwise one thread of our own with one persistent connection:
        # consumers' other services (hello, disconnect) do not queue behind a flush, and a flush
        # does not pay for a new connection.
        self.database: Callable[[list[Any]], Awaitable[tuple[list[Any], list]]]
        if settings.DISPATCH_PARALLEL_DATABASE:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flusher")
            self.database = sync_to_async(
                flush_sync, thread_sensitive=False, executor=self.executor
            )
        else:
            self.database = database_sync_to_async(flush_sync)

    async def submit(self, item: Any) -> Any:
        """Queue one item and return its outcome once its batch committed (or raise its error)."""
        future = self.loop.create_future()
        self.items.append((item, future, self.flushes))
        self.arrived.set()
        if len(self.items) >= self.max_items:
            self.full.set()
        answer = await future
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _run(self) -> None:
        while True:
            await self.arrived.wait()
            if len(self.items) < self.max_items:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.full.wait(), self.flush_s)
            batch, self.items = batch_take(self.items, max_items=self.max_items, flush=self.flushes)
            if not self.items:
                self.arrived.clear()
            if len(self.items) < self.max_items:
                self.full.clear()
            sends: list[tuple[str, dict[str, Any]]] = []
            try:
                answers, sends = await self.database([item for item, _, _ in batch])
            except Exception as exc:  # the database thread itself failed: nothing committed
                logger.exception("dispatch flush failed")
                answers = [exc] * len(batch)
            self.flushes += 1
            self.flushed_items += len(batch)
            for (_, future, _), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
            if sends:
                # Not awaited: a slow channel layer (a Redis under a reconnect storm) must not
                # hold up the next flush, which carries hellos and results of every socket.
                delivery = self.loop.create_task(self._deliver(sends))
                self.deliveries.add(delivery)
                delivery.add_done_callback(self.deliveries.discard)

    async def _deliver(self, sends: list[tuple[str, dict[str, Any]]]) -> None:
        """After commit: this process's sockets directly, others through the channel layer."""
        layer = None
        for channel_name, message in sends:
            consumer = self.local.get(channel_name)
            if consumer is not None:
                self.loop.create_task(consumer(message))
                continue
            layer = layer or get_channel_layer()
            if layer is None:
                continue
            try:
                await layer.send(channel_name, message)
            except Exception:  # a lost notification is recovered by the client; never fail
                logger.exception("channel layer send to %s failed", channel_name)

    def local_add(self, channel_name: str, handle: Callable[[dict], Awaitable[None]]) -> None:
        """A consumer of this process: messages for it skip the channel layer."""
        self.local[channel_name] = handle

    def local_discard(self, channel_name: str) -> None:
        self.local.pop(channel_name, None)

    def stop(self) -> None:
        self.runner.cancel()


_flushers: dict[asyncio.AbstractEventLoop, Flusher] = {}


def flusher() -> Flusher:
    """This event loop's flusher, started on first use."""
    loop = asyncio.get_running_loop()
    current = _flushers.get(loop)
    if current is None or current.runner.done():
        for stale in [other for other in _flushers if other.is_closed()]:
            del _flushers[stale]
        current = Flusher(
            flush_ms=getattr(settings, "DISPATCH_FLUSH_MS", 5),
            max_items=getattr(settings, "DISPATCH_FLUSH_ITEMS", 256),
        )
        _flushers[loop] = current
    return current
