# ruff: noqa: S608 - the SQL is assembled from the constant column names below, never from input
"""Per-job counters kept by the database: the tables, the triggers that write them, a backfill.

PostgreSQL: statement-level AFTER triggers with transition tables on ``jobs_task`` and
``jobs_assignment`` insert each statement's change as one ``jobs_jobcounterdelta`` row per job
(inserts never wait on a lock; ``jobs/counter_models.py`` says why not an UPDATE). Deletes add no
delta: only a job's deletion deletes tasks and replicas, and Django deletes the job's counters
and deltas first, so a delta written then would point at a job about to go. SQLite (the embedded
single-writer set-up) gets row-level triggers that update the counters row directly.

The SQL is written out here, not imported from the app, so this migration keeps meaning what it
meant when it ran.
"""

import django.db.models.deletion
from django.db import migrations, models

TASK_COUNTERS = {
    "tasks_open": "r.status = 'open'",
    "tasks_queued": "r.status = 'open' AND r.dispatchable",
    "tasks_validated": "r.status = 'validated'",
    "tasks_failed": "r.status = 'failed'",
    "tasks_cancelled": "r.status = 'cancelled'",
}
REPLICA_COUNTERS = {
    f"replicas_{name}": f"r.status = '{status}'"
    for name, status in (
        ("running", "assigned"),
        ("returned", "returned"),
        ("valid", "valid"),
        ("invalid", "invalid"),
        ("error", "error"),
        ("expired", "expired"),
        ("cancelled", "cancelled"),
        ("late", "late"),
    )
}
ALL = [*TASK_COUNTERS, *REPLICA_COUNTERS]
# (table, its counters, which of its rows count): known-answer tasks are the platform's checks.
SOURCES = {
    "jobs_task": (TASK_COUNTERS, "r.known_answer_sha256 = ''"),
    "jobs_assignment": (REPLICA_COUNTERS, "TRUE"),
}


def _deltas(counters: dict[str, str], where: str, *, new: bool, old: bool) -> str:
    """Per job, the change of every counter between the statement's old and new rows."""
    parts = []
    for rows, sign in (("new_rows", "+"), ("old_rows", "-")):
        if (rows == "new_rows" and not new) or (rows == "old_rows" and not old):
            continue
        columns = ", ".join(
            f"{sign}({counters[name]})::int AS {name}" if name in counters else f"0 AS {name}"
            for name in ALL
        )
        parts.append(f"SELECT r.job_id, r.tenant_id, {columns} FROM {rows} AS r WHERE {where}")
    sums = ", ".join(f"sum({name}) AS {name}" for name in ALL)
    changed = " OR ".join(f"sum({name}) <> 0" for name in counters)
    return (
        f"SELECT job_id, (array_agg(tenant_id))[1] AS tenant_id, {sums} "
        f"FROM ({' UNION ALL '.join(parts)}) AS s GROUP BY job_id HAVING {changed}"
    )


def _pg_function(table: str) -> str:
    counters, where = SOURCES[table]
    names = ", ".join(ALL)
    insert = (
        f"INSERT INTO jobs_jobcounterdelta (job_id, tenant_id, {names}) "
        f"SELECT job_id, tenant_id, {names} FROM ("
        f"{_deltas(counters, where, new=True, old=False)}) AS d;"
    )
    update = (
        f"INSERT INTO jobs_jobcounterdelta (job_id, tenant_id, {names}) "
        f"SELECT job_id, tenant_id, {names} FROM ("
        f"{_deltas(counters, where, new=True, old=True)}) AS d;"
    )
    return f"""
CREATE OR REPLACE FUNCTION {table}_counters() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {insert}
  ELSE
    {update}
  END IF;
  RETURN NULL;
END
$body$;
""" + "".join(
        f"CREATE TRIGGER {table}_counters_{op.lower()} AFTER {op} ON {table} "
        f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION {table}_counters();\n"
        for op, tables in (
            ("INSERT", "NEW TABLE AS new_rows"),
            ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        )
    )


def _sqlite_triggers(table: str) -> list[str]:
    counters, where = SOURCES[table]

    def expr(row: str, name: str) -> str:
        return f"({counters[name].replace('r.', row + '.')})"

    names = ", ".join(ALL)
    values = ", ".join(expr("NEW", n) if n in counters else "0" for n in ALL)
    increments = ", ".join(f"{n} = {n} + excluded.{n}" for n in counters)
    update = ", ".join(f"{n} = {n} + {expr('NEW', n)} - {expr('OLD', n)}" for n in counters)
    new_where = where.replace("r.", "NEW.")
    return [
        f"CREATE TRIGGER {table}_counters_insert AFTER INSERT ON {table} "
        f"WHEN {new_where} BEGIN INSERT INTO jobs_jobcounters (job_id, tenant_id, {names}) "
        f"VALUES (NEW.job_id, NEW.tenant_id, {values}) "
        f"ON CONFLICT (job_id) DO UPDATE SET {increments}; END",
        f"CREATE TRIGGER {table}_counters_update AFTER UPDATE ON {table} "
        f"WHEN {new_where} BEGIN INSERT INTO jobs_jobcounters (job_id, tenant_id, {names}) "
        f"VALUES (NEW.job_id, NEW.tenant_id, {', '.join('0' for _ in ALL)}) "
        f"ON CONFLICT (job_id) DO NOTHING; "
        f"UPDATE jobs_jobcounters SET {update} WHERE job_id = NEW.job_id; END",
    ]


def _backfill() -> str:
    """Counters of the jobs that already have tasks, recounted."""
    task_sums = ", ".join(f"count(*) FILTER (WHERE {cond})" for cond in TASK_COUNTERS.values())
    replica_sums = ", ".join(
        "(SELECT count(*) FROM jobs_assignment AS a WHERE a.job_id = r.job_id AND "
        f"{cond.replace('r.', 'a.')})"
        for cond in REPLICA_COUNTERS.values()
    )
    return (
        f"INSERT INTO jobs_jobcounters (job_id, tenant_id, {', '.join(ALL)}) "
        f"SELECT r.job_id, (array_agg(r.tenant_id))[1], {task_sums}, {replica_sums} "
        "FROM jobs_task AS r WHERE r.known_answer_sha256 = '' GROUP BY r.job_id"
    )


def install(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(_backfill())
        for table in SOURCES:
            schema_editor.execute(_pg_function(table))
    elif vendor == "sqlite":
        for table in SOURCES:
            for statement in _sqlite_triggers(table):
                schema_editor.execute(statement)


def uninstall(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for table in SOURCES:
        for op in ("insert", "update"):
            suffix = f" ON {table}" if vendor == "postgresql" else ""
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_counters_{op}{suffix}")
        if vendor == "postgresql":
            schema_editor.execute(f"DROP FUNCTION IF EXISTS {table}_counters()")


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0009_secagg_rounds"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="JobCounters",
            fields=[
                (
                    "job",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="counters",
                        serialize=False,
                        to="jobs.job",
                    ),
                ),
                *[(name, models.BigIntegerField(default=0)) for name in ALL],
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="tenants.tenant",
                    ),
                ),
            ],
            options={"abstract": False},
        ),
        migrations.CreateModel(
            name="JobCounterDelta",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                *[(name, models.BigIntegerField(default=0)) for name in ALL],
                (
                    "job",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="jobs.job",
                    ),
                ),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="tenants.tenant",
                    ),
                ),
            ],
            options={"abstract": False},
        ),
        migrations.RunPython(install, uninstall),
    ]
