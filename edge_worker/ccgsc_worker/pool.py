"""Running tasks: kernel threads (or an injected executor), cancellation and the heartbeat timer.

The session decides *which* task runs and when; ``TaskPool`` only runs what it is told to, one
asyncio task per assignment, and reports each outcome through a callback. A kernel run in a
thread cannot be interrupted safely, so a cancelled run is left to finish and its output is
reported like any other (the session, which has forgotten the task, discards it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from typing import Any

from ccgsc_worker.kernel import (
    DEFAULT_TIMEOUT_SECONDS,
    KernelFailed,
    KernelHashMismatch,
    KernelRejected,
    KernelRunner,
    KernelTimeout,
)
from ccgsc_worker.kernel_store import KernelStore
from ccgsc_worker.protocol import Assignment

log = logging.getLogger("ccgsc_worker")

TaskExecutor = Callable[[Assignment], "bytes | Awaitable[bytes]"]
# on_started(assignment); on_done(assignment, output or None, elapsed_ms, error or None)
StartedHook = Callable[[Assignment], None]
DoneHook = Callable[[Assignment, "bytes | None", int, "BaseException | None"], Awaitable[None]]

RUNNERS_PER_THREAD = 16


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


class TaskPool:
    """Runs assignments with at most ``concurrency`` kernel threads.

    Without an executor, each task's module comes from the kernel store and runs in wasmtime in
    a pool thread (one cached runner per kernel and thread). ``executor`` replaces the kernel
    run: called in a pool thread, or in the event loop when ``inline`` (it may then return an
    awaitable), so many simulated workers can share one process.
    """

    def __init__(
        self,
        concurrency: int,
        kernels: KernelStore,
        *,
        executor: TaskExecutor | None = None,
        inline: bool = False,
        kernel_timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        if inline and executor is None:
            raise ValueError("inline_executor needs an executor")
        self.concurrency = concurrency
        self.kernels = kernels
        self.kernel_timeout = kernel_timeout
        self._executor = executor
        self._inline = inline
        self._threads: _DaemonThreadPool | None = None
        self._local = threading.local()
        self._handles: dict[str, asyncio.Task[None]] = {}

    @property
    def busy(self) -> int:
        """How many runs are under way (cancelled ones included until they return)."""
        return len(self._handles)

    def start(self, assignment: Assignment, on_started: StartedHook, on_done: DoneHook) -> None:
        """Run one assignment; ``on_done`` gets its output or the exception it raised."""
        if assignment.id in self._handles:
            return
        self._handles[assignment.id] = asyncio.get_running_loop().create_task(
            self._work(assignment, on_started, on_done), name=f"ccgsc-task-{assignment.id}"
        )

    def abandon(self) -> None:
        """Stop awaiting every run; threads finish on their own and are not waited for."""
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    async def aclose(self) -> None:
        """Abandon every run and release the kernel threads."""
        handles = list(self._handles.values())
        self.abandon()
        await asyncio.gather(*handles, return_exceptions=True)
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None

    async def _work(
        self, assignment: Assignment, on_started: StartedHook, on_done: DoneHook
    ) -> None:
        try:
            on_started(assignment)
            started = time.monotonic()
            output: bytes | None = None
            error: BaseException | None = None
            try:
                output = await self._execute(assignment)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            elapsed_ms = round((time.monotonic() - started) * 1000)
            if self._handles.get(assignment.id) is asyncio.current_task():
                del self._handles[assignment.id]
            await on_done(assignment, output, elapsed_ms, error)
        finally:
            if self._handles.get(assignment.id) is asyncio.current_task():
                del self._handles[assignment.id]

    async def _execute(self, assignment: Assignment) -> bytes:
        loop = asyncio.get_running_loop()
        if self._executor is not None and self._inline:
            result: Any = self._executor(assignment)
            if inspect.isawaitable(result):
                result = await result
        elif self._executor is not None:
            result = await loop.run_in_executor(self._pool(), self._executor, assignment)
        else:
            wasm = await self.kernels.get(assignment.kernel)
            result = await loop.run_in_executor(self._pool(), self._run_kernel, wasm, assignment)
        if not isinstance(result, bytes | bytearray | memoryview):
            raise TypeError(f"executor returned {type(result).__name__}, expected bytes")
        return bytes(result)

    def _pool(self) -> _DaemonThreadPool:
        if self._threads is None:
            self._threads = _DaemonThreadPool(self.concurrency, "ccgsc-kernel")
        return self._threads

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


class Heartbeat:
    """Calls ``beat`` every ``interval_ms`` until stopped or restarted with another interval."""

    def __init__(self, beat: Callable[[], Awaitable[None]]) -> None:
        self._beat = beat
        self._task: asyncio.Task[None] | None = None

    def set(self, interval_ms: int | None) -> None:
        """Beat every ``interval_ms`` from now on; None stops."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if interval_ms is not None:
            self._task = asyncio.get_running_loop().create_task(self._loop(interval_ms / 1000))

    async def _loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._beat()
            except Exception:
                log.exception("heartbeat failed")
