"""A transaction another session holds open: for tests of what concurrent writers see."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connection, transaction


class _WorkFailed(Exception):
    """The held work raised (its exception is re-raised in the test's thread)."""


@contextlib.contextmanager
def transaction_held(work: Callable[[], Any], *, release_after_s: float | None = None) -> Iterator:
    """Run ``work`` in a transaction on another thread (its own database connection) and keep
    that transaction open, its row locks held and its writes uncommitted, until the block ends
    or, with ``release_after_s``, that many seconds after ``work`` returned (for a block that
    waits on those locks). Yields ``work``'s result; its exception is raised here instead."""
    outcome: dict[str, Any] = {}
    worked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with contextlib.suppress(_WorkFailed), transaction.atomic():
                try:
                    outcome["value"] = work()
                except Exception as exc:  # handed to the test's thread; rolls this one back
                    outcome["error"] = exc
                    raise _WorkFailed from exc
                finally:
                    worked.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert worked.wait(10), "the held transaction's work did not finish"
        if "error" in outcome:
            raise outcome["error"]
        if release_after_s is not None:
            threading.Timer(release_after_s, release.set).start()
        yield outcome["value"]
    finally:
        release.set()
        holder.join(10)
