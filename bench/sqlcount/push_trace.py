"""Timestamps of a job start's way to the workers, in every server process a benchmark starts.

Loaded by this directory's ``sitecustomize`` when ``CCGSC_BENCH_TRACE`` is set (with
``CCGSC_BENCH_SQL_DIR``): as the application's own modules are imported, a few of their
functions are wrapped to note wall-clock times (comparable across processes on one machine):

- ``start_begin`` / ``start_end``: the job-start service, its transaction committed at the end;
- ``queue_chunk``: a chunk of tasks marked dispatchable (the request's and Celery's), with how
  long its statement took and how many tasks it marked;
- ``wake_sent``: a ``dispatch.wake`` handed to the channel layer, and how long that took;
- ``woken``: a process's idle registry woke that many consumers (``recheck_woken``: by its
  periodic re-check);
- ``flush``: a flush's start and duration, its claims, results and other items, and the offers
  it claimed;
- ``first_assign``: a consumer sent its first ``assign`` (one per socket).

The events go to ``<dir>/trace-<pid>.json`` twice a second; the benchmark lines them up with its
own clock. Nothing of this is in the application.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

EVENTS: list[tuple[float, str, dict[str, Any]]] = []


def note(kind: str, at: float | None = None, **data: Any) -> None:
    """One event (``list.append`` is atomic: the flush thread and the loop both note)."""
    EVENTS.append((time.time() if at is None else at, kind, data))


def _patch_lifecycle(module: Any) -> None:
    start, chunk = module.job_start, module._queue_chunk

    @functools.wraps(start)
    def job_start(*args: Any, **kwargs: Any) -> Any:
        note("start_begin")
        try:
            return start(*args, **kwargs)
        finally:
            note("start_end")

    @functools.wraps(chunk)
    def queue_chunk(*args: Any, **kwargs: Any) -> Any:
        began = time.time()
        marked = chunk(*args, **kwargs)
        note("queue_chunk", began, seconds=time.time() - began, tasks=marked[0])
        return marked

    module.job_start, module._queue_chunk = job_start, queue_chunk


def _patch_realtime(module: Any) -> None:
    send = module._send

    @functools.wraps(send)
    def traced(target: str, message: dict[str, Any], *, group: bool) -> None:
        began = time.time()
        send(target, message, group=group)
        if message.get("type") == "dispatch.wake":
            note("wake_sent", began, seconds=time.time() - began, tasks=message.get("tasks"))

    module._send = traced


def _patch_idle(module: Any) -> None:
    wake = module.IdleRegistry.wake

    @functools.wraps(wake)
    def traced(self: Any, tasks: int | None, among: Any = None) -> int:
        woken = wake(self, tasks, among)
        note("woken" if among is None else "recheck_woken", count=woken, tasks=tasks)
        return woken

    module.IdleRegistry.wake = traced


def _patch_flusher(module: Any) -> None:
    flush = module.flush_sync
    from jobs.dispatch.batch import ClaimItem, ResultItem

    @functools.wraps(flush)
    def traced(items: list[Any]) -> Any:
        began = time.time()
        answers, sends = flush(items)
        claims = sum(isinstance(item, ClaimItem) for item in items)
        results = sum(isinstance(item, ResultItem) for item in items)
        offers = sum(len(a) for a in answers if isinstance(a, list)) + sum(
            len(getattr(a, "offers", None) or ()) for a in answers if not isinstance(a, list)
        )
        note(
            "flush",
            began,
            seconds=time.time() - began,
            claims=claims,
            results=results,
            other=len(items) - claims - results,
            offers=offers,
        )
        return answers, sends

    module.flush_sync = traced


def _patch_consumers(module: Any) -> None:
    push = module.WorkerConsumer._push

    @functools.wraps(push)
    async def traced(self: Any, offers: list[Any], *, wanted: int) -> None:
        await push(self, offers, wanted=wanted)
        if offers and not getattr(self, "_bench_first_assign", False):
            self._bench_first_assign = True
            note("first_assign", count=len(offers))

    module.WorkerConsumer._push = traced


PATCHES: dict[str, Callable[[Any], None]] = {
    "jobs.services.lifecycle": _patch_lifecycle,
    "jobs.realtime": _patch_realtime,
    "jobs.dispatch.idle": _patch_idle,
    "jobs.dispatch.flusher": _patch_flusher,
    "jobs.consumers": _patch_consumers,
}


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the patched modules through the other finders and patches them once executed."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install(directory: str) -> None:
    """Patch the modules as they are imported and write the events twice a second."""
    sys.meta_path.insert(0, _Finder())
    path = os.path.join(directory, f"trace-{os.getpid()}.json")

    def writer() -> None:
        while True:
            time.sleep(0.5)
            data = {"pid": os.getpid(), "argv": " ".join(sys.argv[:3]), "events": list(EVENTS)}
            try:
                with open(f"{path}.tmp", "w") as out:
                    json.dump(data, out)
                os.replace(f"{path}.tmp", path)
            except OSError:
                return

    threading.Thread(target=writer, name="bench-push-trace", daemon=True).start()
