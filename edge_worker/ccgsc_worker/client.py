"""Asyncio edge worker: one WebSocket session to the server, kernels run in a thread pool.

``EdgeWorker.run()`` connects, says ``hello``, runs what the server assigns and reconnects after
any connection loss. The per-connection logic goes through a small transport seam
(``attach`` / ``handle_message`` / ``detach``), so it can be driven without a network.

Events passed to ``on_event(name, info)``: ``connecting``, ``connect_failed``, ``welcome``,
``disconnected``, ``reconnecting``, ``assign``, ``started``, ``completed``, ``failed``,
``cancel``, ``dropped``, ``discarded``, ``ack``, ``credit``, ``server_error``, ``bad_message``,
``outbox_overflow``, ``stopping``, ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import platform
import queue
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ccgsc_worker import __version__, abi
from ccgsc_worker import protocol as proto
from ccgsc_worker.kernel import (
    DEFAULT_TIMEOUT_SECONDS,
    KernelFailed,
    KernelHashMismatch,
    KernelRejected,
    KernelRunner,
    KernelTimeout,
)
from ccgsc_worker.protocol import Assignment, KernelRef

log = logging.getLogger("ccgsc_worker")

TaskExecutor = Callable[[Assignment], "bytes | Awaitable[bytes]"]
EventHook = Callable[[str, dict[str, Any]], None]

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
STOP_ACK_TIMEOUT_S = 5.0
OUTBOX_LIMIT = 256
MEMORY_KERNELS = 32
RUNNERS_PER_THREAD = 16
FETCH_ATTEMPTS = 3
FETCH_TIMEOUT_S = 30.0


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


class KernelFetchError(Exception):
    """A kernel module could not be downloaded."""


class Transport(Protocol):
    """What the worker needs from a connection: sending one text or binary message."""

    async def send(self, message: str | bytes, /) -> None:
        """Send one WebSocket message."""


def error_code_for(exc: BaseException) -> str:
    """Map an exception raised while running a task to a protocol error code."""
    if isinstance(exc, KernelHashMismatch):
        return "hash_mismatch"
    if isinstance(exc, KernelRejected):
        return "kernel_rejected"
    if isinstance(exc, KernelTimeout):
        return "timeout"
    if isinstance(exc, KernelFailed):
        return "kernel_failed"
    return "internal"


def websocket_url(server_url: str) -> str:
    """Derive ``ws(s)://host:port/ws/edge/`` from the server's ``http(s)://host:port``."""
    parts = urllib.parse.urlsplit(server_url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"server URL must be http(s)://host[:port], got {server_url!r}")
    base = parts.path.rstrip("/")
    return urllib.parse.urlunsplit((scheme, parts.netloc, base + proto.EDGE_PATH, "", ""))


class Backoff:
    """Reconnect delays: 0.5 s doubling up to 30 s, each drawn uniformly from [d/2, d]."""

    def __init__(
        self,
        initial: float = BACKOFF_INITIAL_S,
        maximum: float = BACKOFF_MAX_S,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng

    def nominal(self) -> float:
        """The un-jittered delay of the next attempt."""
        return min(self.maximum, self.initial * 2 ** min(self.attempt, 32))

    def next_delay(self) -> float:
        """Return the delay before the next attempt and advance."""
        nominal = self.nominal()
        self.attempt += 1
        return nominal / 2 + nominal / 2 * self._rng()

    def reset(self) -> None:
        """Start again from the initial delay (after a successful welcome)."""
        self.attempt = 0


class Outbox:
    """Result frames kept until the server acknowledges them, in completion order."""

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self.limit = limit
        self._frames: OrderedDict[str, bytes] = OrderedDict()

    def put(self, assignment: str, frame: bytes) -> list[str]:
        """Keep a frame; return the ids of the oldest frames dropped to stay within the limit."""
        self._frames[assignment] = frame
        self._frames.move_to_end(assignment)
        dropped = []
        while len(self._frames) > self.limit:
            dropped.append(self._frames.popitem(last=False)[0])
        return dropped

    def ack(self, assignment: str) -> bool:
        """Forget an acknowledged frame; False when it was not (or no longer) held."""
        return self._frames.pop(assignment, None) is not None

    def get(self, assignment: str) -> bytes | None:
        """The frame held for an assignment, if any."""
        return self._frames.get(assignment)

    def frames(self) -> list[tuple[str, bytes]]:
        """Every unacknowledged frame, oldest first."""
        return list(self._frames.items())

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, assignment: object) -> bool:
        return assignment in self._frames

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._frames))


@dataclass
class WorkerStats:
    """Counters of one EdgeWorker since it was created."""

    tasks_completed: int = 0
    results_acked: int = 0
    results_resent: int = 0
    acks: Counter[str] = field(default_factory=Counter)
    validated: int = 0
    work_units: int = 0
    errors: int = 0
    cancelled: int = 0
    server_errors: int = 0
    sessions: int = 0
    disconnects: int = 0


@dataclass
class _Task:
    assignment: Assignment
    state: str = "queued"  # queued -> running
    cancelled: bool = False
    started: float = 0.0
    handle: asyncio.Task[None] | None = None


_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _DaemonThreadPool(Executor):
    """Fixed-size pool of daemon threads, so an abandoned kernel run never delays exit."""

    def __init__(self, size: int, name: str) -> None:
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Queue a call; its future resolves in a pool thread."""
        if self._closed:
            raise RuntimeError("the kernel pool is shut down")
        future: Future[Any] = Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads once their current call returns."""
        self._closed = True
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while True:
                    item = self._queue.get_nowait()
                    if item is not None:
                        item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows http(s) redirects only, and never carries the token to another origin."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to a non-HTTP URL", headers, fp)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


class KernelStore:
    """Fetches kernel modules over HTTP and caches them by sha256 in memory and on disk."""

    def __init__(self, server_url: str, token: str, cache_dir: str | Path | None = None) -> None:
        self.server_url = server_url.rstrip("/") + "/"
        self.token = token
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.fetches = 0
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._opener = urllib.request.build_opener(_RedirectHandler)

    def url_for(self, ref: KernelRef) -> str:
        """Resolve a kernel URL against the server URL; only http(s) is allowed."""
        url = urllib.parse.urljoin(self.server_url, ref.url)
        if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
            raise KernelFetchError(f"refusing to fetch a kernel from {url!r}")
        return url

    async def get(self, ref: KernelRef) -> bytes:
        """Return the module bytes for ``ref``, verified against its sha256."""
        hit = self._memory.get(ref.sha256)
        if hit is None:
            lock = self._locks.setdefault(ref.sha256, asyncio.Lock())
            async with lock:
                hit = self._memory.get(ref.sha256)
                if hit is None:
                    hit = await asyncio.to_thread(self._load, ref)
                    self._memory[ref.sha256] = hit
            self._locks.pop(ref.sha256, None)
        self._memory.move_to_end(ref.sha256)
        while len(self._memory) > MEMORY_KERNELS:
            self._memory.popitem(last=False)
        return hit

    def _disk_path(self, sha256: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{sha256}.wasm"

    def _load(self, ref: KernelRef) -> bytes:
        path = self._disk_path(ref.sha256)
        if path is not None and path.is_file():
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == ref.sha256:
                return data
            path.unlink(missing_ok=True)  # a corrupt cache entry; fetch it again
        data = self._fetch_with_retries(self.url_for(ref))
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256:
            raise KernelHashMismatch(f"sha256 mismatch: expected {ref.sha256}, got {digest}")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
            partial.write_bytes(data)
            os.replace(partial, path)
        return data

    def _fetch_with_retries(self, url: str) -> bytes:
        for attempt in range(FETCH_ATTEMPTS):
            try:
                return self._fetch(url)
            except (urllib.error.URLError, OSError) as exc:
                if attempt + 1 == FETCH_ATTEMPTS:
                    raise KernelFetchError(f"could not fetch {url}: {exc}") from exc
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _fetch(self, url: str) -> bytes:
        self.fetches += 1
        request = urllib.request.Request(url)  # noqa: S310 - url_for() allows http(s) only
        if _origin(url) == _origin(self.server_url):
            request.add_unredirected_header("Authorization", f"Worker {self.token}")
        with self._opener.open(request, timeout=FETCH_TIMEOUT_S) as response:
            data = response.read(abi.MAX_MODULE_BYTES + 1)
        if len(data) > abi.MAX_MODULE_BYTES:
            raise KernelRejected(f"module is larger than {abi.MAX_MODULE_BYTES} bytes")
        return data


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
        if inline_executor and executor is None:
            raise ValueError("inline_executor needs an executor")
        if heartbeat_override is not None and heartbeat_override <= 0:
            raise ValueError("heartbeat_override must be a positive number of milliseconds")
        self.server_url = server_url.strip().rstrip("/")
        self.ws_url = websocket_url(self.server_url)
        self.token = token
        self.concurrency = concurrency
        self.client_version = client_version
        self.heartbeat_override = heartbeat_override
        self.kernel_timeout = kernel_timeout
        self.capabilities = capabilities if capabilities is not None else default_capabilities()
        self.kernels = KernelStore(self.server_url, token, kernel_cache_dir)
        self.stats = WorkerStats()
        self.outbox = Outbox()
        self.backoff = backoff or Backoff()
        self.worker_id: str | None = None
        self.contributor: str | None = None
        self.heartbeat_ms = 10_000
        self.max_result_bytes = proto.MAX_RESULT_BYTES
        self._executor = executor
        self._inline = inline_executor
        self._on_event = on_event
        self._tasks: dict[str, _Task] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._transport: Transport | None = None
        self._welcomed = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._pool: _DaemonThreadPool | None = None
        self._local = threading.local()
        self._stop_requested = False
        self._abandon = False
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None

    # -- public API -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between a ``welcome`` and the end of that connection."""
        return self._transport is not None and self._welcomed

    @property
    def stopping(self) -> bool:
        """True once stop() has been called."""
        return self._stop_requested

    @property
    def active(self) -> dict[str, str]:
        """Assignments held right now, mapped to ``queued`` or ``running``."""
        return {aid: task.state for aid, task in self._tasks.items()}

    async def run(self) -> None:
        """Work until stop(); raise WorkerRejected on close code 4001 or 4002."""
        self._wake = asyncio.Event()
        if self._stop_requested:
            self._wake.set()
        try:
            while not self._stop_requested:
                code, reason = await self._session(self._wake)
                if self._stop_requested:
                    break
                if code in proto.FATAL_CLOSE_CODES:
                    raise WorkerRejected(code, reason)
                delay = self.backoff.next_delay()
                self._emit("reconnecting", delay=delay, code=code, reason=reason)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            await self._shutdown()
            self._emit("stopped", stats=self.stats)

    def stop(self, *, abandon: bool = False) -> None:
        """Ask run() to finish: running tasks complete and are delivered unless ``abandon``."""
        first = not self._stop_requested
        self._stop_requested = True
        self._abandon = self._abandon or abandon
        if first or abandon:
            self._emit("stopping", abandon=self._abandon)
        if self._wake is not None:
            self._wake.set()
        self._notify()

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no assignment is queued or running; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._tasks:
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
        self._welcomed = False
        message = proto.hello(
            self.token,
            client_version=self.client_version,
            capabilities=self.capabilities,
            slots=0 if self._stop_requested else self.concurrency,
            resume=self.worker_id,
            user_agent=f"ccgsc-worker/{self.client_version} Python/{platform.python_version()} "
            f"{platform.system()} {platform.machine()}",
        )
        await transport.send(proto.encode_text(message))

    async def handle_message(self, data: str | bytes) -> None:
        """Process one message from the server."""
        if isinstance(data, bytes | bytearray | memoryview):
            self._emit("bad_message", error="unexpected binary frame from the server")
            return
        try:
            message = proto.parse_server_message(data)
            await getattr(self, f"_on_{message['type']}")(message)
        except (KeyError, TypeError, ValueError) as exc:  # ProtocolError is a ValueError
            self._emit("bad_message", error=str(exc)[:300])
        except Exception as exc:
            log.exception("failed to handle a server message")
            self._emit("bad_message", error=f"{type(exc).__name__}: {exc}"[:300])

    def detach(self) -> None:
        """Forget the current connection; running tasks go on and their results wait."""
        if self._transport is not None:
            self.stats.disconnects += 1
            self._emit("disconnected")
        self._transport = None
        self._welcomed = False
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    # -- server messages ------------------------------------------------------------------

    async def _on_welcome(self, message: dict[str, Any]) -> None:
        worker = message["worker"]
        heartbeat_ms = message["heartbeat_ms"]
        if not isinstance(worker, str) or not worker:
            raise ValueError("welcome: worker must be a string")
        if isinstance(heartbeat_ms, bool) or not isinstance(heartbeat_ms, int | float):
            raise ValueError("welcome: heartbeat_ms must be a number")
        resumed = worker == self.worker_id
        self.worker_id = worker
        contributor = message.get("contributor")
        self.contributor = contributor if isinstance(contributor, str) else None
        self.heartbeat_ms = max(100, int(heartbeat_ms))
        limits = message.get("limits")
        if isinstance(limits, dict) and isinstance(limits.get("max_result_bytes"), int):
            self.max_result_bytes = limits["max_result_bytes"]
        self._welcomed = True
        self.backoff.reset()
        self.stats.sessions += 1
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        outstanding = message.get("outstanding")
        if isinstance(outstanding, list):
            expected = {a for a in outstanding if isinstance(a, str)}
            for aid, task in list(self._tasks.items()):
                if task.state == "queued" and aid not in expected:
                    self._drop(aid, "not outstanding after reconnect")
        self._emit(
            "welcome",
            worker=worker,
            contributor=self.contributor,
            resumed=resumed,
            heartbeat_ms=self.heartbeat_ms,
            resending=len(self.outbox),
        )
        for _, frame in self.outbox.frames():
            if await self._send(frame):
                self.stats.results_resent += 1
        if self._stop_requested:
            await self._send(proto.encode_text(proto.capacity(0)))
        self._heartbeat = asyncio.create_task(self._heartbeat_loop())

    async def _on_assign(self, message: dict[str, Any]) -> None:
        assignment = proto.decode_assign(message)
        if assignment.id in self._tasks:
            return
        frame = self.outbox.get(assignment.id)
        if frame is not None:  # assigned again after we finished it: the result answers it
            await self._send(frame)
            return
        if self._stop_requested:
            self._emit("dropped", assignment=assignment.id, reason="stopping")
            return
        task = _Task(assignment)
        self._tasks[assignment.id] = task
        task.handle = asyncio.create_task(self._work(task), name=f"ccgsc-task-{assignment.id}")
        self._emit("assign", assignment=assignment)

    async def _on_ack(self, message: dict[str, Any]) -> None:
        aid, status = str(message["assignment"]), str(message["status"])
        if self.outbox.ack(aid):
            self.stats.results_acked += 1
            self.stats.acks[status] += 1
            self._emit("ack", assignment=aid, status=status)
            self._notify()

    async def _on_credit(self, message: dict[str, Any]) -> None:
        validated, work_units = message["validated"], message["work_units"]
        if isinstance(work_units, str) and work_units.isdigit():
            work_units = int(work_units)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (validated, work_units)):
            raise ValueError("credit: validated and work_units must be integers")
        self.stats.validated += validated
        self.stats.work_units += work_units
        self._emit("credit", validated=validated, work_units=work_units)

    async def _on_cancel(self, message: dict[str, Any]) -> None:
        aid = str(message["assignment"])
        task = self._tasks.get(aid)
        if task is None or task.cancelled:
            return
        self.stats.cancelled += 1
        self._emit("cancel", assignment=aid, state=task.state, reason=message.get("reason"))
        if task.state == "queued":
            self._drop(aid, "cancelled")
        else:
            task.cancelled = True  # finishes in its thread; its result is not sent

    async def _on_error(self, message: dict[str, Any]) -> None:
        self.stats.server_errors += 1
        self._emit(
            "server_error",
            code=message.get("code"),
            message=message.get("message"),
            ref=message.get("ref"),
        )

    async def _on_pong(self, message: dict[str, Any]) -> None:
        return

    # -- tasks ----------------------------------------------------------------------------

    def _drop(self, aid: str, reason: str) -> None:
        task = self._tasks.pop(aid, None)
        if task is not None and task.handle is not None:
            task.handle.cancel()
        self._emit("dropped", assignment=aid, reason=reason)
        self._notify()

    async def _work(self, task: _Task) -> None:
        assignment = task.assignment
        try:
            async with self._slots:
                if task.cancelled or self._stop_requested:
                    return
                task.state = "running"
                task.started = time.monotonic()
                self._emit("started", assignment=assignment)
                try:
                    output = await self._execute(assignment, task)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    await self._fail(task, error_code_for(exc), str(exc) or type(exc).__name__)
                    return
            elapsed_ms = round((time.monotonic() - task.started) * 1000)
            if task.cancelled:
                self._emit("discarded", assignment=assignment.id, elapsed_ms=elapsed_ms)
                return
            if len(output) > self.max_result_bytes:
                limit = self.max_result_bytes
                message = f"output of {len(output)} bytes exceeds the {limit}-byte result limit"
                await self._fail(task, "kernel_failed", message)
                return
            frame = proto.encode_result_frame(assignment.id, output, elapsed_ms)
            for lost in self.outbox.put(assignment.id, frame):
                self._emit("outbox_overflow", assignment=lost)
            self.stats.tasks_completed += 1
            self._emit(
                "completed", assignment=assignment, elapsed_ms=elapsed_ms, output_bytes=len(output)
            )
            await self._send(frame)
        finally:
            if self._tasks.get(assignment.id) is task:
                del self._tasks[assignment.id]
            self._notify()

    async def _execute(self, assignment: Assignment, task: _Task) -> bytes:
        loop = asyncio.get_running_loop()
        if self._executor is not None and self._inline:
            result: Any = self._executor(assignment)
            if inspect.isawaitable(result):
                result = await result
        elif self._executor is not None:
            result = await loop.run_in_executor(self._kernel_pool(), self._executor, assignment)
        else:
            wasm = await self.kernels.get(assignment.kernel)
            if task.cancelled:
                return b""
            result = await loop.run_in_executor(
                self._kernel_pool(), self._run_kernel, wasm, assignment
            )
        if not isinstance(result, bytes | bytearray | memoryview):
            raise TypeError(f"executor returned {type(result).__name__}, expected bytes")
        return bytes(result)

    def _kernel_pool(self) -> _DaemonThreadPool:
        if self._pool is None:
            self._pool = _DaemonThreadPool(self.concurrency, "ccgsc-kernel")
        return self._pool

    def _run_kernel(self, wasm: bytes, assignment: Assignment) -> bytes:
        """Run one task in a pool thread, with that thread's runner for the kernel."""
        runners: OrderedDict[str, KernelRunner] = self._local.__dict__.setdefault(
            "runners", OrderedDict()
        )
        sha256 = assignment.kernel.sha256
        runner = runners.get(sha256)
        if runner is None:
            runner = KernelRunner(wasm, sha256, timeout=self.kernel_timeout)
            runners[sha256] = runner
            while len(runners) > RUNNERS_PER_THREAD:
                runners.popitem(last=False)
        runners.move_to_end(sha256)
        return runner.run(assignment.input_bytes())

    async def _fail(self, task: _Task, code: str, message: str) -> None:
        self.stats.errors += 1
        self._emit("failed", assignment=task.assignment.id, code=code, message=message)
        if not task.cancelled:
            await self._send(proto.encode_text(proto.error(task.assignment.id, code, message)))

    # -- connection -----------------------------------------------------------------------

    async def _send(self, data: str | bytes) -> bool:
        """Send on the current connection once welcomed; False when there is none."""
        transport = self._transport
        if transport is None or not self._welcomed:
            return False
        try:
            await transport.send(data)
        except (ConnectionClosed, OSError):
            return False
        return True

    def _heartbeat_interval(self) -> float:
        period_ms = self.heartbeat_override or self.heartbeat_ms
        return max(0.05, period_ms / 2000)

    async def _heartbeat_loop(self) -> None:
        interval = self._heartbeat_interval()
        while True:
            await asyncio.sleep(interval)
            for aid, task in list(self._tasks.items()):
                if not task.cancelled:  # queued ones too: their lease runs as well
                    await self._send(proto.encode_text(proto.progress(aid)))

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
                    stopper = asyncio.create_task(wake.wait())
                    try:
                        await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
                        if not receiver.done():
                            await self._drain()
                    finally:
                        for pending in (receiver, stopper):
                            pending.cancel()
                        await asyncio.gather(receiver, stopper, return_exceptions=True)
                finally:
                    self.detach()
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

    async def _drain(self) -> None:
        """Graceful stop on a live connection: no new work, finish, deliver, await acks."""
        await self._send(proto.encode_text(proto.capacity(0)))
        for aid, task in list(self._tasks.items()):
            if task.state == "queued":
                self._drop(aid, "stopping")
        while self._tasks and not self._abandon:
            await self._wait_changed(None)
        deadline = time.monotonic() + STOP_ACK_TIMEOUT_S
        while len(self.outbox) and self.connected and not self._abandon:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self._wait_changed(remaining)

    async def _wait_changed(self, timeout: float | None) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _shutdown(self) -> None:
        self.detach()
        handles = [t.handle for t in self._tasks.values() if t.handle is not None]
        for handle in handles:
            handle.cancel()
        await asyncio.gather(*handles, return_exceptions=True)
        self._tasks.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _emit(self, name: str, **info: Any) -> None:
        log.debug("%s %s", name, info)
        if self._on_event is None:
            return
        try:
            self._on_event(name, info)
        except Exception:
            log.exception("on_event hook failed for %s", name)
