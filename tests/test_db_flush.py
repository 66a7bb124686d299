"""The flush between transactional tests survives being PostgreSQL's deadlock victim (the
servers a module shares keep running their periodic tasks while a test's rows are flushed), and
raises anything else."""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest
from django.core.management.base import CommandError
from django.core.management.color import no_style
from django.core.management.sql import sql_flush
from django.db import connection
from django.test.testcases import TransactionTestCase

from tenants.models import Tenant
from tests import db_flush

pytestmark = [pytest.mark.services]


def _dsn() -> str:
    settings = connection.settings_dict
    return (
        f"host={settings['HOST'] or '127.0.0.1'} port={settings['PORT'] or 5432} "
        f"user={settings['USER']} dbname={settings['NAME']}"
    )


def _truncated_tables() -> list[str]:
    """The tables the flush truncates, in the order its one statement locks them."""
    (statement,) = [s for s in sql_flush(no_style(), connection) if s.startswith("TRUNCATE")]
    return re.findall(r'"([^"]+)"', statement)


@pytest.mark.django_db(transaction=True)
def test_a_flush_picked_as_a_deadlock_victim_runs_again_and_empties_the_tables(tenant):
    # given another session that holds a lock on the table the flush locks last, and asks for
    # the one it locks first once the flush waits: a deadlock that PostgreSQL resolves by ending
    # the flush (it checks after 100 ms, the other session after 10 s)
    tables = _truncated_tables()
    first, last = tables[0], tables[-1]
    holding, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def other_session() -> None:
        try:
            with (
                psycopg.connect(_dsn()) as other,
                psycopg.connect(_dsn(), autocommit=True) as probe,
            ):
                other.execute("SET deadlock_timeout = '10s'")
                other.execute(f'LOCK TABLE "{last}" IN ROW SHARE MODE')
                holding.set()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    waiting = probe.execute(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted "
                        "AND mode = 'AccessExclusiveLock'"
                    ).fetchone()[0]
                    if waiting:
                        break
                    time.sleep(0.01)
                other.execute(f'LOCK TABLE "{first}" IN ROW SHARE MODE')
                other.commit()
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
        finally:
            done.set()

    attempts: list[int] = []

    def counted(case: TransactionTestCase) -> None:
        attempts.append(1)
        TransactionTestCase._fixture_teardown.__wrapped__(case)

    thread = threading.Thread(target=other_session)
    thread.start()
    assert holding.wait(10)
    with connection.cursor() as cursor:
        cursor.execute("SET deadlock_timeout = '100ms'")
    # when the flush runs
    db_flush.retrying(counted)(TransactionTestCase())
    thread.join(15)
    # then its first attempt was the victim, the second emptied the tables
    assert done.is_set()
    assert not errors
    assert len(attempts) == 2
    assert not Tenant.objects.exists()


def test_a_flush_that_fails_otherwise_is_not_retried():
    # given a flush failing for a reason other than a deadlock
    attempts: list[int] = []

    def failing(case: object) -> None:
        attempts.append(1)
        raise CommandError("Database test couldn't be flushed.") from psycopg.errors.UndefinedTable(
            'relation "gone" does not exist'
        )

    # when it runs, then its error is raised after one attempt
    with pytest.raises(CommandError):
        db_flush.retrying(failing, pause_s=0)(object())
    assert len(attempts) == 1


def test_the_installed_flush_is_wrapped_once():
    # given the suite's set-up installed the retrying flush
    installed = TransactionTestCase._fixture_teardown
    # when it is installed again, then it is the same wrapper
    db_flush.install()
    assert TransactionTestCase._fixture_teardown is installed
    assert hasattr(installed, "__wrapped__")
