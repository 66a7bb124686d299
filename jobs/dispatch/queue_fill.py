"""The claim side of lazy queue filling: a claim that took a job's low-water mark
(``Task.queue_low_mark``, placed by the fill) asks Celery for that job's next fill.

No query of its own: the mark is a column the claim reads with the task anyway. Each process
asks once per mark (a mark is taken once per replica of its task, and again after a lease
expiry); the fill is idempotent, so another process asking for the same mark costs one short
transaction that finds the queue full.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from django.db import transaction

logger = logging.getLogger(__name__)

# How many marks a process remembers having asked for (a few per running job is plenty).
ASKED_MARKS_KEPT = 1024

_asked: OrderedDict[int, None] = OrderedDict()
_asked_lock = threading.Lock()
_sender: ThreadPoolExecutor | None = None


def queue_fill_request(*, marks: Iterable[tuple[int, uuid.UUID]]) -> None:
    """After the caller's transaction commits, ask for a fill of the jobs whose low-water mark
    a claim took (``marks``: (task id, job id) pairs of the marked tasks it took), once per mark
    and process. A rolled-back claim asks for nothing (its retry takes the mark again); a
    failed publish is logged, not raised: the periodic fill is the safety net."""
    marks = list(marks)
    if marks:
        transaction.on_commit(lambda: _send_soon(marks), robust=True)


def _send_soon(marks: list[tuple[int, uuid.UUID]]) -> None:
    """Send on a thread of its own: a flush runs its on-commit callbacks before it answers its
    sockets, and a process's first Celery publish (broker connection, kombu's set-up) took
    0.4 s on the loaded development machine, all of it added to that flush. With eager Celery
    (tests, no broker) there is nothing to wait for, and the fill runs inline."""
    from ccgsc_site.celery import app

    if app.conf.task_always_eager:
        queue_fill_send(marks=marks)
        return
    _sending_thread().submit(_send_logged, marks)


def _sending_thread() -> ThreadPoolExecutor:
    global _sender
    with _asked_lock:
        if _sender is None:
            _sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-fill")
        return _sender


def sender_warm() -> Future | None:
    """Do the fill requests' one-time publish set-up now, on the thread that sends them, so a
    process's first fill request costs what the others do (``None`` with eager Celery).

    A process's first Celery publish connects to the broker, declares its queue, imports and
    binds the tasks, builds the task sender and looks up the result backend (which scans the
    installed packages' entry points, once per thread): 70-85 ms of CPU here, against under
    1 ms for the next ones. A job start
    asks for its first fill while its first ``assign``s leave (``jobs.services.lifecycle``), so
    ``ccgsc_site.asgi`` calls this when a Daphne starts, before it serves anyone."""
    from ccgsc_site.celery import app

    if app.conf.task_always_eager:
        return None
    return _sending_thread().submit(_warm_logged)


def _warm_logged() -> bool:
    """The set-up of ``sender_warm``; False (logged) if the broker could not be reached: the
    first fill request then does it, as before."""
    from ccgsc_site.celery import app
    from jobs.tasks import job_queue_fill

    try:
        app.finalize(auto=True)  # the shared tasks bound to the app, as the first send does
        job_queue_fill.name  # noqa: B018 - the shared task's proxy, resolved on first use
        app.backend  # noqa: B018 - looked up once per thread, on first use
        app.amqp.send_task_message  # noqa: B018 - the task sender, built on first use
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
            for queue in app.amqp.queues.values():
                producer.maybe_declare(queue)
    except Exception:
        logger.warning("queue fill sender not warmed", exc_info=True)
        return False
    return True


def _send_logged(marks: list[tuple[int, uuid.UUID]]) -> None:
    try:
        queue_fill_send(marks=marks)
    except Exception:  # the periodic fill is the safety net
        logger.exception("queue fill request not sent")


def queue_fill_send(*, marks: list[tuple[int, uuid.UUID]]) -> list[uuid.UUID]:
    """Send a fill for each job of ``marks`` that this process has not asked for yet under the
    same mark; returns the jobs asked for."""
    from jobs.tasks import job_queue_fill  # tasks import dispatch: looked up late

    jobs: list[uuid.UUID] = []
    with _asked_lock:
        for task_id, job_id in marks:
            if task_id in _asked:
                continue
            _asked[task_id] = None
            if len(_asked) > ASKED_MARKS_KEPT:
                _asked.popitem(last=False)
            if job_id not in jobs:
                jobs.append(job_id)
    for job_id in jobs:
        job_queue_fill.delay(str(job_id))
    return jobs
