"""Even out new connections between the Daphne processes that share one listening socket.

The launcher (``scripts/daphne_launcher.py``) starts N Daphnes on one inherited socket, and the
kernel hands each new connection to whichever process accepts first. Under a burst (a job
start's workers reconnecting, a swarm connecting) that split 1,000 worker sockets 340–660
between two processes, and a process holding more than its share needs an extra claim flush for
its sockets' first claims (``docs/benchmarks.md``). Here each process stops accepting while it
serves more connections than the least loaded live process plus a slack, so the others take the
next ones; the connections wait in the socket's queue meanwhile, which belongs to the socket, not
to a process, so nothing is lost.

How the processes know each other's load: the launcher creates a small shared file of one slot
per process (``SlotTable``) and tells each child its slot (``CCGSC_DAPHNE_BALANCE=path:slot``).
Every ``TICK_S`` each child writes its open connections (``ConnectionCount``: the ASGI
application instances alive, so open WebSockets and requests in flight) and a timestamp, reads
every slot, and pauses or resumes its listening ports (Twisted's ``stopReading`` /
``startReading``). Only live slots count: one whose timestamp is older than ``STALE_S`` (a
process dead, stopped or stuck) is ignored, and the launcher clears a dead child's slot. The
least loaded live process never pauses, so some process always accepts.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENVIRONMENT = "CCGSC_DAPHNE_BALANCE"
# How often a process publishes its load and decides; how old a slot may be and still count.
TICK_S = 0.02
STALE_S = 1.0
# Connections a process may serve beyond the least loaded one before it stops accepting: a few,
# plus 2 % of its own, so a burst is not accepted one tick at a time.
SLACK_MIN = 8
SLACK_SHARE = 0.02

# One slot: open connections (int64) and when they were written (float64, time.monotonic(),
# which is one clock for every process of the machine).
_SLOT = struct.Struct("<qd")


def accepts(own: int, live: Sequence[int]) -> bool:
    """Whether a process serving ``own`` connections should accept more, given the loads of
    the live processes (its own included)."""
    if not live:
        return True
    slack = max(SLACK_MIN, int(own * SLACK_SHARE))
    return own <= min(live) + slack


class SlotTable:
    """The shared file of per-process loads, mapped into memory."""

    def __init__(self, path: Path, slots: int) -> None:
        self.path = path
        self.slots = slots
        with path.open("r+b") as file:
            self.map = mmap.mmap(file.fileno(), slots * _SLOT.size)

    @classmethod
    def create(cls, path: Path, slots: int) -> SlotTable:
        """A new table of ``slots`` empty slots (none of them live)."""
        path.write_bytes(bytes(slots * _SLOT.size))
        return cls(path, slots)

    @classmethod
    def open(cls, path: Path) -> SlotTable:
        return cls(path, path.stat().st_size // _SLOT.size)

    def write(self, slot: int, connections: int, at: float) -> None:
        _SLOT.pack_into(self.map, slot * _SLOT.size, connections, at)

    def clear(self, slot: int) -> None:
        """The slot's process is gone: not live until a new one writes it."""
        self.write(slot, 0, 0.0)

    def live(self, now: float) -> list[int]:
        """The loads of the slots written within ``STALE_S`` of ``now``."""
        loads = []
        for slot in range(self.slots):
            connections, at = _SLOT.unpack_from(self.map, slot * _SLOT.size)
            if at > 0 and now - at <= STALE_S:
                loads.append(connections)
        return loads


class ConnectionCount:
    """ASGI middleware counting the application instances alive in this process."""

    def __init__(self, app: Callable[..., Awaitable[Any]]) -> None:
        self.app = app
        self.open = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> Any:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        self.open += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.open -= 1


class Balancer:
    """This process's side: publish the load, pause or resume the listening ports."""

    def __init__(self, table: SlotTable, slot: int, count: ConnectionCount) -> None:
        self.table = table
        self.slot = slot
        self.count = count
        self.ports: list[Any] = []
        self.paused = False

    def start(self) -> None:
        from twisted.internet import task

        task.LoopingCall(self.tick).start(TICK_S, now=True)

    def tick(self) -> None:
        try:
            now = time.monotonic()
            own = self.count.open
            self.table.write(self.slot, own, now)
            self._pause(not accepts(own, self.table.live(now)))
        except Exception:  # balancing must never stop the process from serving
            logger.exception("connection balancing failed: accepting")
            try:
                self._pause(False)
            except Exception:
                logger.exception("could not resume accepting")

    def _listening(self) -> list[Any]:
        """This process's listening TCP ports (found once: a paused port is not a reader)."""
        if not self.ports:
            from twisted.internet import reactor, tcp

            self.ports = [r for r in reactor.getReaders() if isinstance(r, tcp.Port)]
        return [port for port in self.ports if port.connected and not port.disconnecting]

    def _pause(self, pause: bool) -> None:
        if pause == self.paused:
            return
        for port in self._listening():
            if pause:
                port.stopReading()
            else:
                port.startReading()
        self.paused = pause


def start_from_environment(count: ConnectionCount) -> Balancer | None:
    """In a Daphne the launcher started (``CCGSC_DAPHNE_BALANCE`` set), balance from the
    reactor's start; elsewhere nothing."""
    value = os.environ.get(ENVIRONMENT, "")
    if not value:
        return None
    path, _, slot = value.rpartition(":")
    balancer = Balancer(SlotTable.open(Path(path)), int(slot), count)
    from twisted.internet import reactor

    reactor.callWhenRunning(balancer.start)
    return balancer
