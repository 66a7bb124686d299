"""A process's idle worker sockets: targeted wakes and one periodic re-check for all of them.

Work is pushed. A worker consumer that claimed fewer tasks than it has room for registers here
as idle, and it is woken two ways:

- **Targeted wakes.** The process, not every socket, is in the dispatch group (with group
  commit); a wake saying how many tasks became dispatchable lets that many idle consumers claim
  (all of them when it does not say), so a thousand idle sockets are not woken for one task.
- **The re-check.** A wake can be lost (a Redis blip, a process that was restarting), and an FL
  invite sent from another process can be missed. So every ``DISPATCH_IDLE_RECHECK_S`` (with
  ±50 % jitter, so processes started together drift apart) the process asks once, for all its
  idle workers, which of them could claim a task and which have invites pending, then wakes only
  those, at most as many as there are replicas to hand out. Ten thousand idle sockets cost one
  pair of queries per period, not ten thousand timers each running its own (a per-socket timer
  did that, and at 10,000 sockets its ~670 queries/s starved the hellos).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import Exists, F, OuterRef, Q, Subquery

from jobs import realtime
from jobs.models import COUNTED_REPLICA_STATUSES, DISPATCH_ORDER, Assignment, Task, Worker
from jobs.services.fl_rounds_invites import fl_invites_pending_by_worker_unscoped

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IdleWork:
    """What a re-check found for a set of idle workers."""

    claimable: set[uuid.UUID] = field(default_factory=set)
    replicas: int = 0
    invites: dict[uuid.UUID, list[dict[str, Any]]] = field(default_factory=dict)


def idle_work_unscoped(*, worker_ids: list[uuid.UUID]) -> IdleWork:
    """Which of these workers could claim a task now, how many replicas the queue wants (at
    least as many as there are workers, when it wants that many), and their pending FL
    invites: three queries whatever the number of workers.

    A worker could claim when the first task of its queue (the public one, or its contributor's
    private pool) that its contributor holds no counted replica of exists. Each worker's first
    task is asked for in claim order (``ORDER BY priority DESC, id LIMIT 1``) so that
    PostgreSQL walks the queue's partial index (``task_dispatch_queue``) from its head and stops
    at the first match. Asked as ``EXISTS`` it dropped the order, and with the statistics of a
    table that had just received a job's tasks PostgreSQL read the whole task table for every
    worker: 4.4 s for 500 workers and 75,000 tasks, of which 504 were queued, and a
    re-check that fell into a job start's push cost it 250–490 ms of PostgreSQL's CPU
    (``docs/benchmarks.md``). The replicas are summed over the queue's first tasks, as many
    as the workers (each queued task wants one or more): a re-check wakes at most that many."""
    if not worker_ids:
        return IdleWork()
    held = Assignment.objects.unscoped().filter(
        task=OuterRef("pk"),
        contributor_id=OuterRef(OuterRef("contributor_id")),
        status__in=COUNTED_REPLICA_STATUSES,
    )
    queued = Task.objects.unscoped().filter(dispatchable=True).order_by(*DISPATCH_ORDER)
    queue = queued.filter(~Exists(held)).values("pk")
    public = queue.filter(private_pool=False)[:1]
    pool = queue.filter(tenant_id=OuterRef("contributor__pool_tenant_id"))[:1]
    claimable = set(
        Worker.objects.filter(pk__in=worker_ids, is_banned=False, contributor__is_banned=False)
        .alias(public_head=Subquery(public), pool_head=Subquery(pool))
        .filter(
            Q(contributor__pool_tenant__isnull=True, public_head__isnull=False)
            | Q(contributor__pool_tenant__isnull=False, pool_head__isnull=False)
        )
        .order_by()
        .values_list("pk", flat=True)
    )
    replicas = 0
    if claimable:
        wanted = F("target_replicas") - F("active_replicas")  # above 0 for a dispatchable task
        replicas = sum(queued.values_list(wanted, flat=True)[: len(worker_ids)])
    return IdleWork(
        claimable=claimable,
        replicas=replicas,
        invites=fl_invites_pending_by_worker_unscoped(worker_ids=worker_ids),
    )


@dataclass(frozen=True, slots=True)
class IdleConsumer:
    """An idle socket: its worker, how it claims, how it is sent invites."""

    worker_id: uuid.UUID
    fill: Callable[[], Awaitable[None]]
    invite: Callable[[list[dict[str, Any]]], Awaitable[None]]


class IdleRegistry:
    """This process's idle worker consumers (in the order they became idle)."""

    def __init__(self, *, recheck_s: float, listen: bool) -> None:
        self.recheck_s = recheck_s
        self.listen = listen
        self.idle: dict[str, IdleConsumer] = {}
        self.loop = asyncio.get_running_loop()
        self.listener: asyncio.Task | None = None
        self.rechecker: asyncio.Task | None = None
        self.rechecks = 0
        self.database: Callable[[list[uuid.UUID]], Awaitable[IdleWork]] = database_sync_to_async(
            lambda ids: idle_work_unscoped(worker_ids=ids),
            thread_sensitive=not settings.DISPATCH_PARALLEL_DATABASE,
        )

    def add(self, channel_name: str, consumer: IdleConsumer) -> None:
        """A consumer found less work than it has room for: wake it when work appears."""
        self.idle[channel_name] = consumer
        self._start()

    def discard(self, channel_name: str) -> None:
        self.idle.pop(channel_name, None)

    def _start(self) -> None:
        if self.listen and (self.listener is None or self.listener.done()):
            self.listener = self.loop.create_task(self._listen_wakes(), name="dispatch-wakes")
        if self.rechecker is None or self.rechecker.done():
            self.rechecker = self.loop.create_task(self._recheck_loop(), name="dispatch-recheck")

    async def _listen_wakes(self) -> None:
        """This process's one member of the dispatch group: wake idle consumers on demand."""
        layer = get_channel_layer()
        if layer is None:
            return
        # The layer's own prefix: channels_redis reads one process-local queue per layer, so a
        # channel of another prefix would wait behind the consumers' receive.
        channel = await layer.new_channel()
        await layer.group_add(realtime.DISPATCH_GROUP, channel)
        try:
            while True:
                message = await layer.receive(channel)
                if message.get("type") == "dispatch.wake":
                    self.wake(message.get("tasks"))
        finally:
            with contextlib.suppress(Exception):
                await layer.group_discard(realtime.DISPATCH_GROUP, channel)

    def wake(self, tasks: int | None, among: set[uuid.UUID] | None = None) -> int:
        """Let up to ``tasks`` idle consumers (all, if None) claim, the longest idle first, only
        those whose worker is in ``among`` when given; returns how many."""
        candidates = [
            (name, consumer)
            for name, consumer in self.idle.items()
            if among is None or consumer.worker_id in among
        ]
        count = len(candidates) if tasks is None else min(int(tasks), len(candidates))
        for name, consumer in candidates[:count]:
            del self.idle[name]
            self.loop.create_task(consumer.fill())
        return count

    async def _recheck_loop(self) -> None:
        while True:
            await asyncio.sleep(self.recheck_s * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
            try:
                await self.recheck()
            except Exception:  # the next period tries again; never end the loop
                logger.exception("idle re-check failed")

    async def recheck(self) -> int:
        """One re-check of every idle consumer; returns how many were woken."""
        if not self.idle:
            return 0
        self.rechecks += 1
        snapshot = dict(self.idle)
        found = await self.database([consumer.worker_id for consumer in snapshot.values()])
        for name, consumer in snapshot.items():
            invites = found.invites.get(consumer.worker_id)
            if invites and self.idle.get(name) is consumer:
                self.loop.create_task(consumer.invite(invites))
        return self.wake(found.replicas, among=found.claimable) if found.claimable else 0

    def stop(self) -> None:
        for task in (self.listener, self.rechecker):
            if task is not None:
                task.cancel()


_registries: dict[asyncio.AbstractEventLoop, IdleRegistry] = {}


def idle_registry() -> IdleRegistry:
    """This event loop's registry of idle worker consumers."""
    loop = asyncio.get_running_loop()
    current = _registries.get(loop)
    if current is None:
        for stale in [other for other in _registries if other.is_closed()]:
            del _registries[stale]
        current = IdleRegistry(
            recheck_s=float(getattr(settings, "DISPATCH_IDLE_RECHECK_S", 15.0)),
            listen=bool(getattr(settings, "DISPATCH_GROUP_COMMIT", False)),
        )
        _registries[loop] = current
    return current
