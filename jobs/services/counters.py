"""Folding the per-job counter deltas (written by triggers) into the counters rows."""

from __future__ import annotations

from django.db import connection

from jobs.counter_models import COUNTER_FIELDS, JobCounterDelta, JobCounters


def job_counters_fold(*, batch: int = 20_000) -> int:
    """Move up to ``batch`` pending deltas into their jobs' counters rows in one statement;
    returns how many moved. Safe beside flushes (they only insert deltas) and beside another
    fold (each takes the deltas it deletes; ``SKIP LOCKED`` skips the other's). Readers add the
    pending deltas in one statement, so they see the same totals before and after a fold.

    PostgreSQL only: SQLite's triggers update the counters row directly (nothing to fold)."""
    if connection.vendor != "postgresql":
        return 0
    delta, counters = JobCounterDelta._meta.db_table, JobCounters._meta.db_table
    names = ", ".join(COUNTER_FIELDS)
    sums = ", ".join(f"sum({name})" for name in COUNTER_FIELDS)
    increments = ", ".join(f"{name} = c.{name} + EXCLUDED.{name}" for name in COUNTER_FIELDS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH gone AS (DELETE FROM {delta} WHERE id IN ("  # noqa: S608 - names only
            f"SELECT id FROM {delta} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"RETURNING job_id, tenant_id, {names}), "
            f"folded AS (INSERT INTO {counters} AS c (job_id, tenant_id, {names}) "
            f"SELECT job_id, (array_agg(tenant_id))[1], {sums} FROM gone GROUP BY job_id "
            f"ORDER BY job_id ON CONFLICT (job_id) DO UPDATE SET {increments}) "
            "SELECT count(*) FROM gone",
            [batch],
        )
        return int(cursor.fetchone()[0])
