"""The dispatch bench's per-backend CPU read-out (``bench/dispatch_probes.backends_cpu``), on the
real PostgreSQL: a backend that burns CPU between two snapshots is listed with its type and the
first words of its last statement; one that did nothing is left out."""

import psycopg
import pytest

from bench.dispatch_probes import backends_cpu, cpu_snapshot
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
