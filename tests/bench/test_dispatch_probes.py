"""The dispatch benches' CPU read-outs of PostgreSQL backends (``bench/dispatch_probes``), on the
real PostgreSQL: a backend that burns CPU between two snapshots is listed with its type and the
first words of its last statement, and one that did nothing is left out; a backend's scheduled
CPU (what the claim-flush bench charges a flush) grows by what it ran."""

import psycopg
import pytest

from bench.dispatch_probes import backends_cpu, cpu_snapshot, scheduled_cpu_ms
from tests import servers

pytestmark = [pytest.mark.services, pytest.mark.django_db]


def test_backends_cpu_names_the_busy_backend():
    url = servers.test_database_url()
    with (
        psycopg.connect(url, autocommit=True) as probe,
        psycopg.connect(url, autocommit=True) as busy,
        psycopg.connect(url, autocommit=True) as idle,
    ):
        busy_pid = busy.execute("SELECT pg_backend_pid()").fetchone()[0]
        idle_pid = idle.execute("SELECT pg_backend_pid()").fetchone()[0]
        before = cpu_snapshot(probe, {})
        # given one backend that runs a CPU-bound statement between the snapshots
        busy.execute("SELECT count(*) FROM generate_series(1, 3000000) AS g  -- burn")
        after = cpu_snapshot(probe, {})
        # when the read-out compares them
        rows = backends_cpu(probe, before, after)
    by_pid = {row["pid"]: row for row in rows}
    # then the busy backend is listed, with its type and its last statement, busiest first
    # (other tests' servers may share the database: the order is checked, not the first place)
    assert [row["cpu_ms"] for row in rows] == sorted((row["cpu_ms"] for row in rows), reverse=True)
    assert by_pid[busy_pid]["cpu_ms"] >= 10
    assert by_pid[busy_pid]["type"] == "client backend"
    assert by_pid[busy_pid]["last"].startswith("SELECT count(*) FROM generate_series(1, 3000000)")
    # and the one that ran nothing is not
    assert idle_pid not in by_pid


def test_scheduled_cpu_counts_what_a_backend_ran_and_not_what_it_did_not():
    url = servers.test_database_url()
    with (
        psycopg.connect(url, autocommit=True) as busy,
        psycopg.connect(url, autocommit=True) as idle,
    ):
        busy_pid = busy.execute("SELECT pg_backend_pid()").fetchone()[0]
        idle_pid = idle.execute("SELECT pg_backend_pid()").fetchone()[0]
        busy_before, idle_before = scheduled_cpu_ms(busy_pid), scheduled_cpu_ms(idle_pid)
        # given one backend that runs a CPU-bound statement and one that runs nothing
        busy.execute("SELECT count(*) FROM generate_series(1, 3000000) AS g")
        # when their scheduled CPU is read again
        busy_ms = scheduled_cpu_ms(busy_pid) - busy_before
        idle_ms = scheduled_cpu_ms(idle_pid) - idle_before
    # then the busy one grew by at least the statement's work, read at a finer grain than the
    # 10 ms ticks of /proc's stat (whose readings are whole multiples of 10 ms), and the idle one
    # by next to nothing
    assert busy_ms >= 10
    assert busy_ms % 10 != 0
    assert idle_ms < 2
