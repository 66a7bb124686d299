"""Asyncio edge worker: one WebSocket to the server, driving the pure session state machine.

``EdgeWorker.run()`` connects, says ``hello``, runs what the server assigns and reconnects after
any connection loss. What to send and do is decided by ``session.Session``; this module only
carries its effects out (socket I/O, the back-off wait, the task pool, the heartbeat timer).
The per-connection part goes through a small transport seam (``attach`` / ``handle_message`` /
``detach``), so it can be driven without a network.

Events passed to ``on_event(name, info)``: ``connecting``, ``connect_failed``, ``welcome``,
``disconnected``, ``reconnecting``, ``assign``, ``started``, ``completed``, ``failed``,
``cancel``, ``dropped``, ``discarded``, ``ack``, ``credit``, ``server_error``, ``bad_message``,
``outbox_overflow``, ``stopping``, ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ccgsc_worker import __version__
from ccgsc_worker import protocol as proto
from ccgsc_worker.backoff import Backoff
from ccgsc_worker.kernel import DEFAULT_TIMEOUT_SECONDS
from ccgsc_worker.kernel_store import KernelFetchError, KernelStore
from ccgsc_worker.outbox import Outbox
from ccgsc_worker.pool import Heartbeat, TaskExecutor, TaskPool, error_code_for
from ccgsc_worker.protocol import Assignment
from ccgsc_worker.session import Effect, Session, SessionCounters

__all__ = [
    "Backoff",
    "EdgeWorker",
    "KernelFetchError",
    "KernelStore",
    "Outbox",
    "Transport",
    "WorkerRejected",
    "WorkerStats",
    "default_capabilities",
    "error_code_for",
    "websocket_url",
]

log = logging.getLogger("ccgsc_worker")

EventHook = Callable[[str, dict[str, Any]], None]
WorkerStats = SessionCounters  # the counters EdgeWorker.stats exposes

STOP_ACK_TIMEOUT_S = 5.0
HEARTBEAT_FLOOR_MS = 50


class WorkerRejected(Exception):
    """The server closed the session with a code that reconnecting cannot fix (4001, 4002)."""

    def __init__(self, code: int, reason: str = "") -> None:
        text = {
            proto.CLOSE_UNAUTHORIZED: "the server rejected the worker token (bad, revoked or banned)",
            proto.CLOSE_PROTOCOL_VERSION: "the server does not support this worker's protocol version",
        }.get(code, "the server refused the worker")
        super().__init__(f"{text} (close code {code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class Transport(Protocol):
    """What the worker needs from a connection: sending one text or binary message."""

    async def send(self, message: str | bytes, /) -> None:
        """Send one WebSocket message."""


def websocket_url(server_url: str) -> str:
    """Derive ``ws(s)://host:port/ws/edge/`` from the server's ``http(s)://host:port``."""
    parts = urllib.parse.urlsplit(server_url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"server URL must be http(s)://host[:port], got {server_url!r}")
    base = parts.path.rstrip("/")
    return urllib.parse.urlunsplit((scheme, parts.netloc, base + proto.EDGE_PATH, "", ""))


def _memory_mb() -> int | None:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    return total // (1024 * 1024) if total > 0 else None


def default_capabilities() -> dict[str, Any]:
    """What this machine reports in ``hello``: cores, memory (when readable) and SIMD."""
    capabilities: dict[str, Any] = {"cores": min(1024, max(1, os.cpu_count() or 1)), "simd": True}
    memory = _memory_mb()
    if memory is not None:
        capabilities["memory_mb"] = min(memory, 16_777_216)
    return capabilities


class EdgeWorker:
    """An edge worker session that runs assignments and keeps results until acknowledged."""

    def __init__(
        self,
        server_url: str,
        token: str,
        concurrency: int = 1,
        *,
        executor: TaskExecutor | None = None,
        inline_executor: bool = False,
        kernel_cache_dir: str | Path | None = None,
        client_version: str = __version__,
        heartbeat_override: int | None = None,
        on_event: EventHook | None = None,
        kernel_timeout: float = DEFAULT_TIMEOUT_SECONDS,
        capabilities: dict[str, Any] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        """Configure the worker; nothing connects until run()."""
        if not 1 <= concurrency <= proto.MAX_SLOTS:
            raise ValueError(f"concurrency must be in 1..{proto.MAX_SLOTS}, got {concurrency}")
        if heartbeat_override is not None and heartbeat_override <= 0:
            raise ValueError("heartbeat_override must be a positive number of milliseconds")
        self.server_url = server_url.strip().rstrip("/")
        self.ws_url = websocket_url(self.server_url)
        self.token = token
        self.concurrency = concurrency
        self.client_version = client_version
        self.capabilities = capabilities if capabilities is not None else default_capabilities()
        self.kernels = KernelStore(self.server_url, token, kernel_cache_dir)
        self.pool = TaskPool(
            concurrency,
            self.kernels,
            executor=executor,
            inline=inline_executor,
            kernel_timeout=kernel_timeout,
        )
        self.session = Session(
            concurrency=concurrency,
            build_hello=self._hello,
            backoff=backoff,
            heartbeat_floor_ms=HEARTBEAT_FLOOR_MS,
            heartbeat_override_ms=heartbeat_override,
        )
        self._on_event = on_event
        self._transport: Transport | None = None
        self._heartbeat = Heartbeat(self._beat)
        self._held: dict[str, Assignment] = {}  # what the pool was told to run, for events
        self._stop_requested = False
        self._abandon = False
        self._ended: dict[str, Any] | None = None  # the session's "end" effect
        self._next_delay_ms = 0
        self._close_reason = ""
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- public API -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between a ``welcome`` and the end of that connection."""
        return self._transport is not None and self.session.connected

    @property
    def stopping(self) -> bool:
        """True once stop() has been called."""
        return self._stop_requested

    @property
    def active(self) -> dict[str, str]:
        """Assignments held right now, mapped to ``queued`` or ``running``."""
        return self.session.tasks

    @property
    def stats(self) -> SessionCounters:
        """Counters since the worker was created."""
        return self.session.counters

    @property
    def outbox(self) -> Outbox:
        """Results kept until acknowledged."""
        return self.session.outbox

    @property
    def backoff(self) -> Backoff:
        """The reconnect schedule."""
        return self.session.backoff

    @property
    def worker_id(self) -> str | None:
        """The worker id the server gave us (kept to resume after a reconnect)."""
        return self.session.worker_id

    @property
    def contributor(self) -> str | None:
        """The contributor the worker token belongs to, once welcomed."""
        return self.session.contributor

    async def run(self) -> None:
        """Work until stop(); raise WorkerRejected on close code 4001 or 4002."""
        self._wake = asyncio.Event()
        if self._stop_requested:
            self._emit("stopped", stats=self.stats)
            return
        try:
            await self._apply(self.session.start())
            while self._ended is None:
                if self._next_delay_ms:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._next_delay_ms / 1000)
                    if self._ended is not None:
                        break
                code, reason = await self._session(self._wake)
                self._transport = None
                self._close_reason = reason
                await self._apply(self.session.closed(code, reason))
        finally:
            await self._shutdown()
            self._emit("stopped", stats=self.stats)
        if self._ended["code"] in proto.FATAL_CLOSE_CODES:
            raise WorkerRejected(self._ended["code"], self._close_reason)

    def stop(self, *, abandon: bool = False) -> None:
        """Ask run() to finish: running tasks complete and are delivered unless ``abandon``."""
        first = not self._stop_requested
        self._stop_requested = True
        self._abandon = self._abandon or abandon
        if first or abandon:
            self._emit("stopping", abandon=self._abandon)
        self._apply_now(self.session.stop(abandon=self._abandon))
        if not self._abandon and self.session.stopping:
            self._spawn(self._stop_watchdog())

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no assignment is queued or running; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.session.tasks or self.pool.busy:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await self._wait_changed(remaining)
        return True

    async def aclose(self) -> None:
        """Abandon held assignments and release the kernel threads (run() does this itself)."""
        await self._shutdown()

    # -- transport seam -------------------------------------------------------------------

    async def attach(self, transport: Transport) -> None:
        """Start a connection on ``transport``: send ``hello`` (with ``resume`` after a welcome)."""
        self._transport = transport
        effects = self.session.start()  # only when never started: this seam may be used alone
        await self._apply([e for e in effects if e["do"] != "connect"])
        await self._apply(self.session.opened())

    async def handle_message(self, data: str | bytes) -> None:
        """Process one message from the server."""
        await self._apply(self.session.message(data))

    def detach(self) -> None:
        """Forget the current connection; running tasks go on and their results wait."""
        self._transport = None
        self._apply_now(self.session.closed(None))

    # -- effects --------------------------------------------------------------------------

    def _hello(self, slots: int, resume: str | None) -> dict[str, Any]:
        return proto.hello(
            self.token,
            client_version=self.client_version,
            capabilities=self.capabilities,
            slots=slots,
            resume=resume,
            user_agent=f"ccgsc-worker/{self.client_version} Python/{platform.python_version()} "
            f"{platform.system()} {platform.machine()}",
        )

    async def _apply(self, effects: Iterable[Effect]) -> None:
        """Carry out the session's effects in order."""
        for effect in effects:
            kind = effect["do"]
            if kind == "send":
                await self._send(proto.encode_text(effect["message"]))
            elif kind == "send_result":
                frame = self.outbox.get(effect["assignment"])
                if frame is not None:
                    await self._send(frame)
            else:
                self._do(effect)
        self._notify()

    def _apply_now(self, effects: Iterable[Effect]) -> None:
        """Carry out effects from synchronous code; what is to be sent goes out in a task."""
        sends = []
        for effect in effects:
            if effect["do"] in ("send", "send_result"):
                sends.append(effect)
            else:
                self._do(effect)
        if sends:
            self._spawn(self._apply(sends))
        self._notify()

    def _do(self, effect: Effect) -> None:
        kind = effect["do"]
        if kind == "run":
            assignment = self.session.assignment(effect["assignment"])
            self._held[assignment.id] = assignment
            self.pool.start(assignment, self._on_started, self._on_done)
        elif kind == "cancel":
            pass  # a kernel run cannot be interrupted safely: the pool lets it finish
        elif kind == "connect":
            self._next_delay_ms = effect["delay_ms"]
        elif kind == "heartbeat":
            self._heartbeat.set(effect["interval_ms"])
        elif kind in ("close", "end"):
            if kind == "end":
                self._ended = effect
            if self._wake is not None:
                self._wake.set()
        elif kind == "notify":
            self._notify_event(effect)

    def _notify_event(self, effect: Effect) -> None:
        info = {k: v for k, v in effect.items() if k not in ("do", "event")}
        name = effect["event"]
        if name == "assign":
            info["assignment"] = self.session.assignment(info["assignment"])
        elif name == "completed":
            assignment = self._held.get(info["assignment"])
            if assignment is not None:
                info["assignment"] = assignment
        elif name == "reconnecting":
            info["delay"] = info.pop("delay_ms") / 1000
        self._emit(name, **info)

    def _on_started(self, assignment: Assignment) -> None:
        self._emit("started", assignment=assignment)

    async def _on_done(
        self,
        assignment: Assignment,
        output: bytes | None,
        elapsed_ms: int,
        error: BaseException | None,
    ) -> None:
        if error is not None or output is None:
            self._held.pop(assignment.id, None)
            text = str(error) or type(error).__name__
            await self._apply(self.session.failed(assignment.id, error_code_for(error), text))
            return
        effects = self.session.finished(assignment.id, output, elapsed_ms)
        for effect in effects:
            if effect.get("event") == "completed":
                effect["output_bytes"] = len(output)
        await self._apply(effects)
        self._held.pop(assignment.id, None)

    async def _beat(self) -> None:
        await self._apply(self.session.tick())

    async def _send(self, data: str | bytes) -> bool:
        """Send on the current connection; False when there is none."""
        transport = self._transport
        if transport is None:
            return False
        try:
            await transport.send(data)
        except (ConnectionClosed, OSError):
            return False
        return True

    # -- connection -----------------------------------------------------------------------

    async def _session(self, wake: asyncio.Event) -> tuple[int | None, str]:
        """One connection, from connect to close; return the close code and reason."""
        self._emit("connecting", url=self.ws_url)
        try:
            async with connect(
                self.ws_url,
                compression=None,
                open_timeout=15,
                max_size=proto.MAX_JSON_BYTES * 4,
                user_agent_header=f"ccgsc-worker/{self.client_version}",
            ) as ws:
                try:
                    await self.attach(ws)
                    receiver = asyncio.create_task(self._receive(ws))
                    closer = asyncio.create_task(wake.wait())
                    try:
                        await asyncio.wait({receiver, closer}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for pending in (receiver, closer):
                            pending.cancel()
                        await asyncio.gather(receiver, closer, return_exceptions=True)
                finally:
                    self._transport = None
        except InvalidURI:
            raise
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                return exc.rcvd.code, exc.rcvd.reason
            return None, str(exc)
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self._emit("connect_failed", error=str(exc) or type(exc).__name__)
            return None, str(exc)
        return ws.close_code, ws.close_reason or ""

    async def _receive(self, ws: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await self.handle_message(message)

    async def _stop_watchdog(self) -> None:
        """A graceful stop waits for running tasks, then at most a few seconds for acks."""
        while self.session.tasks and self.session.stopping:
            await self._wait_changed(None)
        deadline = time.monotonic() + STOP_ACK_TIMEOUT_S
        while self.session.stopping and time.monotonic() < deadline:
            await self._wait_changed(deadline - time.monotonic())
        if self.session.stopping:
            self.stop(abandon=True)

    async def _wait_changed(self, timeout: float | None) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _spawn(self, coroutine: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coroutine)
        except RuntimeError:  # no event loop: nothing is running that could be affected
            coroutine.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shutdown(self) -> None:
        self._transport = None
        self._heartbeat.set(None)
        for task in list(self._background):
            if task is not asyncio.current_task():
                task.cancel()
        await self.pool.aclose()
        self._held.clear()

    def _emit(self, name: str, **info: Any) -> None:
        log.debug("%s %s", name, info)
        if self._on_event is None:
            return
        try:
            self._on_event(name, info)
        except Exception:
            log.exception("on_event hook failed for %s", name)
