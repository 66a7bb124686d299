"""Asyncio edge worker: one WebSocket to the server, driving the pure session state machine.

``EdgeWorker.run()`` connects, says ``hello``, runs what the server assigns and reconnects after
any connection loss, waiting as the session's back-off says. What to send and do is decided by
``session.Session`` and carried out by ``driver.SessionDriver``, whose transport seam
(``attach`` / ``handle_message`` / ``detach``) lets tests drive it without a network; this
module adds the WebSocket itself, the reconnect loop and the graceful stop.

Events passed to ``on_event(name, info)``: ``connecting``, ``connect_failed``, ``welcome``,
``disconnected``, ``reconnecting``, ``assign``, ``started``, ``completed``, ``failed``,
``cancel``, ``dropped``, ``discarded``, ``ack``, ``credit``, ``server_error``, ``bad_message``,
``outbox_overflow``, ``stopping``, ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import time
import urllib.parse
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ccgsc_worker import __version__
from ccgsc_worker import protocol as proto
from ccgsc_worker.backoff import Backoff
from ccgsc_worker.driver import EventHook, SessionDriver, Transport
from ccgsc_worker.kernel import DEFAULT_TIMEOUT_SECONDS
from ccgsc_worker.kernel_store import KernelFetchError, KernelStore
from ccgsc_worker.outbox import Outbox
from ccgsc_worker.pool import TaskExecutor, TaskPool, error_code_for
from ccgsc_worker.session import Session, SessionCounters
from ccgsc_worker.training import RoundTrainer
from ccgsc_worker.transfer import Http

__all__ = [
    "Backoff",
    "EdgeWorker",
    "KernelFetchError",
    "KernelStore",
    "Outbox",
    "SessionDriver",
    "Transport",
    "WorkerRejected",
    "WorkerStats",
    "default_capabilities",
    "error_code_for",
    "websocket_url",
]

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


class EdgeWorker(SessionDriver):
    """An edge worker: a session driven over a WebSocket, reconnecting until stopped."""

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
        max_upload_bytes_per_second: int | None = None,
        local_data: str | None = None,
    ) -> None:
        """Configure the worker; nothing connects until run(). ``local_data`` is a CSV file
        analytics jobs on contributors' own data read (it is never uploaded)."""
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
        session = Session(
            concurrency=concurrency,
            build_hello=self._hello,
            backoff=backoff,
            heartbeat_floor_ms=HEARTBEAT_FLOOR_MS,
            heartbeat_override_ms=heartbeat_override,
        )
        if max_upload_bytes_per_second is not None and max_upload_bytes_per_second <= 0:
            raise ValueError("max_upload_bytes_per_second must be a positive number of bytes")
        trainer = RoundTrainer(
            Http(self.server_url, token),
            max_upload_bytes_per_second=max_upload_bytes_per_second,
            local_data=local_data,
        )
        super().__init__(session, self.pool, on_event, trainer=trainer, kernels=self.kernels)
        self._stop_requested = False
        self._abandon = False
        self._close_reason = ""

    @property
    def stopping(self) -> bool:
        """True once stop() has been called."""
        return self._stop_requested

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
        if first and not self._abandon and self.session.stopping:
            self._spawn(self._stop_watchdog())

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

    async def aclose(self) -> None:
        """Abandon held assignments and release the kernel threads (run() does this itself)."""
        await self._shutdown()

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

    async def _shutdown(self) -> None:
        self._transport = None
        self._heartbeat.set(None)
        for task in list(self._background):
            if task is not asyncio.current_task():
                task.cancel()
        await self.pool.aclose()
        self._held.clear()
