"""Counts the SQL statements a benchmark's server process runs (Daphne, Celery), by kind.

Python imports ``sitecustomize`` at start-up from the path, so a benchmark that puts this
directory on ``PYTHONPATH`` and sets ``CCGSC_BENCH_SQL_DIR`` gets a counter in every process it
starts, the launcher's Daphnes included, without a line of it in the application. Every new
database connection gets an ``execute_wrapper``; a daemon thread writes the running totals to
``<dir>/sql-<pid>.json`` twice a second, and the benchmark subtracts the totals read at the two
ends of its window. Unset, this file does nothing.

Transactions are counted too: every commit of an atomic block, plus every statement run outside
one (under autocommit each is a transaction of its own), so a test can tell a batch of hellos
from one transaction per hello.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time

_DIR = os.environ.get("CCGSC_BENCH_SQL_DIR")


class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.statements = 0
        self.connections = 0
        self.commits = 0
        self.autocommit_statements = 0

    def __call__(self, execute, sql, params, many, context):  # noqa: ANN001, ANN204
        head = sql.lstrip()[:80].upper()
        kind = head.split(None, 1)[0] if head else "?"
        if "FOR UPDATE" in sql.upper():
            kind += " FOR UPDATE"
        alone = not context["connection"].in_atomic_block
        with self.lock:
            self.statements += 1
            self.by_kind[kind] += 1
            self.autocommit_statements += alone
        return execute(sql, params, many, context)

    def on_commit(self) -> None:
        with self.lock:
            self.commits += 1

    def on_connection(self, sender, connection, **kwargs):  # noqa: ANN001, ANN003, ANN201
        with self.lock:
            self.connections += 1
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)

    def dump(self, path: str) -> None:
        with self.lock:
            data = {
                "pid": os.getpid(),
                "argv": " ".join(sys.argv[:3]),
                "t": time.time(),
                "statements": self.statements,
                "connections": self.connections,
                "commits": self.commits,
                "autocommit_statements": self.autocommit_statements,
                "transactions": self.commits + self.autocommit_statements,
                "by_kind": dict(self.by_kind),
            }
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            json.dump(data, out)
        os.replace(tmp, path)


def _install(directory: str) -> None:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.signals import connection_created

    counter = _Counter()
    connection_created.connect(counter.on_connection, weak=False)
    commit = BaseDatabaseWrapper.commit

    def counted_commit(self):  # noqa: ANN001, ANN202
        counter.on_commit()
        return commit(self)

    BaseDatabaseWrapper.commit = counted_commit
    path = os.path.join(directory, f"sql-{os.getpid()}.json")

    def writer() -> None:
        while True:
            time.sleep(0.5)
            try:
                counter.dump(path)
            except OSError:
                return

    threading.Thread(target=writer, name="bench-sql-count", daemon=True).start()


if _DIR:
    try:
        _install(_DIR)
    except Exception as exc:  # never break the process it rides in  # noqa: BLE001
        print(f"bench sql counter not installed: {exc!r}", file=sys.stderr)

if _DIR and os.environ.get("CCGSC_BENCH_TRACE"):
    try:
        import push_trace  # this directory: timestamps of a job start's push

        push_trace.install(_DIR)
    except Exception as exc:  # never break the process it rides in  # noqa: BLE001
        print(f"bench push trace not installed: {exc!r}", file=sys.stderr)
