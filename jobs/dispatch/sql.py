"""A cursor whose parameters PostgreSQL binds, for the dispatch plane's set-based statements.

Django's PostgreSQL backend uses psycopg's ``ClientCursor`` unless ``server_side_binding`` is set
for the whole site: parameters are quoted into the SQL text in Python. For the group-commit
statements, whose parameters are one array per column (``unnest``), that quoting was most of a
claim flush's Python time: a regular expression per array element, ten thousand per 1,000
claims, plus a ``str`` per UUID. With :func:`bound_cursor` the same ``%s`` statements go as
``$n`` placeholders and each array is sent as one binary value. The cursor is wrapped by Django
(query logging and execute wrappers see its statements) and runs in the current transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection


@contextmanager
def bound_cursor() -> Iterator[Any]:
    """A Django cursor on the default connection with server-side parameter binding
    (PostgreSQL); elsewhere the ordinary cursor."""
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            yield cursor
        return
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.ensure_connection()
    connection.validate_thread_sharing()
    raw = ServerBindingCursor(connection.connection)
    wrapped = (
        connection.make_debug_cursor(raw)
        if connection.queries_logged
        else connection.make_cursor(raw)
    )
    with wrapped as cursor:
        yield cursor
