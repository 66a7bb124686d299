"""The test database's flush between transactional tests, retried when PostgreSQL picks it as a
deadlock victim.

Service-backed modules share real servers across their tests (a Daphne, a Celery worker with
beat). Their periodic tasks (queue fill every 3 s, lease, round and secure-round sweeps) keep
running while pytest-django empties the tables with one ``TRUNCATE`` of every table, which takes
its locks table by table; a sweep that locked one of them and waits for another can deadlock
with it, and PostgreSQL may end the ``TRUNCATE``. The sweep's transaction finishes, and a second
flush succeeds. Anything other than a deadlock is raised as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

FLUSH_ATTEMPTS = 4
RETRY_PAUSE_S = 0.2


def is_deadlock(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is PostgreSQL's deadlock error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "sqlstate", None) == "40P01" or "deadlock detected" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def retrying(
    teardown: Callable[[Any], None],
    *,
    attempts: int = FLUSH_ATTEMPTS,
    pause_s: float = RETRY_PAUSE_S,
) -> Callable[[Any], None]:
    """``teardown`` (a test case's flush), run again after a deadlock, up to ``attempts`` times."""

    def flush(self: Any) -> None:
        for attempt in range(1, attempts + 1):
            try:
                teardown(self)
            except Exception as exc:
                if attempt == attempts or not is_deadlock(exc):
                    raise
                time.sleep(pause_s * attempt)
            else:
                return

    flush.__wrapped__ = teardown  # type: ignore[attr-defined]
    return flush


def install() -> None:
    """Make every transactional test's flush retry deadlocks (once per process)."""
    from django.test.testcases import TransactionTestCase

    current = TransactionTestCase._fixture_teardown
    if not hasattr(current, "__wrapped__"):
        TransactionTestCase._fixture_teardown = retrying(current)
