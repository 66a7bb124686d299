#!/usr/bin/env python3
"""One group-commit claim flush, alone: its CPU on the flushing thread and its wall time.

A job start wakes every idle socket, and each Daphne claims for them in flushes of 256 first
claims (``jobs.dispatch.batch.dispatch_batch`` on the flusher's database thread, which shares the
GIL with the event loop that sends the ``assign``s). This measures one such flush with nothing
else running: a throwaway PostgreSQL database from a migrated template (as ``bench_dispatch.py``
builds it), a running quorum-2 job and ``--claims`` workers of distinct contributors, each
claiming one replica per flush (each flush takes the queue's next tasks, so the same workers
claim again), and the garbage collector set as ``ccgsc_site.asgi`` sets it in Daphne.

Two ways of sending the flush's array parameters run alternately, flush by flush, in the same
run: ``bound`` (the site's ``jobs.dispatch.sql.bound_cursor``: PostgreSQL binds them, one binary
value per array) and ``client`` (the same statements through Django's default cursor, which
quotes every array element into the SQL text in Python: what the site did before). Reported per
way: median and spread of the flushing thread's CPU, of its PostgreSQL backend's CPU (the
scheduler's nanosecond count in ``/proc/<pid>/schedstat``: the server runs on this machine) and
of the wall time per flush, and the ratios. Thread plus backend CPU over ``--claims`` is what one
lease costs the two cores before its ``assign`` may leave.

Usage: python bench/bench_claim_flush.py [--quick] [--claims 256] [--flushes 12]
Writes bench/results/claim_flush.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("CCGSC_BENCH_DATABASE", "ccgsc_bench_flush")
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_dispatch import (  # noqa: E402 - the database name is set first
    ROOT,
    TEMPLATE,
    bench_env,
    build_template,
    django_setup,
    drop_database,
    fresh_database,
)
from dispatch_probes import scheduled_cpu_ms  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "claim_flush.json"


class _ClientCursor:
    """The flush's statements through Django's default (client-side binding) cursor."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    def execute(self, sql: str, params: Any = None) -> Any:
        return self.cursor.execute(sql.replace("%b", "%s"), params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cursor, name)


@contextlib.contextmanager
def _client_cursor() -> Iterator[_ClientCursor]:
    from django.db import connection

    with connection.cursor() as cursor:
        yield _ClientCursor(cursor)


def _use(way: str) -> None:
    """Point the claim modules at one way of sending parameters."""
    from jobs.dispatch import batch_leases, claim, sql

    cursor = sql.bound_cursor if way == "bound" else _client_cursor
    batch_leases.bound_cursor = cursor
    claim.bound_cursor = cursor


@contextlib.contextmanager
def django_database(label: str) -> Iterator[None]:
    """A throwaway database from the migrated template (built first), Django set up on it and
    the garbage collector set as ``ccgsc_site.asgi`` sets it in Daphne; afterwards both
    databases are dropped, whatever happened."""
    env = bench_env(label)
    print("building the benchmark database ...", flush=True)
    build_template(env)
    fresh_database()
    try:
        django_setup(env)
        from django.conf import settings

        gc.freeze()
        gc.set_threshold(*settings.ASGI_GC_THRESHOLDS)
        yield
    finally:
        from django.db import connections

        connections.close_all()
        drop_database(os.environ["CCGSC_BENCH_DATABASE"])
        drop_database(TEMPLATE)


def _fixtures(claims: int, tasks: int) -> list[Any]:
    """A running quorum-2 job of ``tasks`` tasks, all queued, and ``claims`` online workers of
    distinct contributors; returns the workers' ids."""
    from django.conf import settings

    from jobs import dispatch, services
    from jobs.models import Contributor, Kernel
    from tenants import services as tenant_services
    from tenants.models import Tenant, User
    from tenants.roles import Role
    from tenants.tiers import Tier
    from tests.jobs.helpers import HELLO

    user = User.objects.create_user(email="flush-bench@example.com")
    tenant = tenant_services.tenant_create(name="Flush bench", owner=user, tier=Tier.ENTERPRISE)
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.ENTERPRISE)
    tenant.refresh_from_db()
    contributors = Contributor.objects.bulk_create([Contributor() for _ in range(claims)])
    hello = {**HELLO, "slots": 1}
    workers = [
        dispatch.worker_connect(contributor=c, hello=hello, channel_name="").worker_id
        for c in contributors
    ]
    # Every task queued at the start: no low-water mark is reached, no fill runs meanwhile.
    settings.DISPATCH_QUEUE_HIGH = tasks
    settings.DISPATCH_QUEUE_CHUNK = tasks
    services.job_create(
        tenant=tenant,
        actor=user,
        actor_role=Role.OWNER,
        spec=services.JobSpec(
            name="flush bench",
            kernel=Kernel.objects.get(name="prime_count", tenant=None),
            range_start=1,
            range_end=1 + tasks * 1000,
            chunk_size=1000,
            params={},
            quorum=2,
            seed=5,
        ),
        start=True,
    )
    return workers


def _flush(workers: list[Any]) -> tuple[float, float, float, int]:
    """One claim flush for every worker (one replica each): (thread CPU ms, PostgreSQL backend
    CPU ms, wall ms, offers)."""
    from django.db import connection, transaction

    from jobs.dispatch.batch import dispatch_batch
    from jobs.dispatch.batch_leases import ClaimItem

    items = [ClaimItem(worker_id=w, count=1) for w in workers]
    connection.ensure_connection()
    backend = connection.connection.info.backend_pid
    database = scheduled_cpu_ms(backend)
    wall, cpu = time.perf_counter(), time.thread_time()
    with transaction.atomic():
        outcome = dispatch_batch(
            results=[], heartbeats=[], errors=[], claims=items, hellos=[], disconnects=[]
        )
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    database = scheduled_cpu_ms(backend) - database
    return cpu * 1000, database, wall * 1000, sum(len(offers) for offers in outcome.claims)


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--claims", type=int, default=256, help="claims per flush")
    parser.add_argument("--flushes", type=int, default=12, help="measured flushes per way")
    parser.add_argument("--quick", action="store_true", help="4 flushes per way")
    args = parser.parse_args(argv)
    flushes = 4 if args.quick else args.flushes
    ways = ("bound", "client")
    # Two warm-up flushes per way; each flush takes claims / 2 tasks (quorum 2).
    tasks = (flushes + 2) * len(ways) * args.claims // 2 + args.claims

    measured: dict[str, dict[str, list[float]]] = {
        w: {"cpu_ms": [], "postgresql_cpu_ms": [], "wall_ms": []} for w in ways
    }
    offers_seen: set[int] = set()
    with django_database("claimflush"):
        workers = _fixtures(args.claims, tasks)
        try:
            for round_ in range(flushes + 2):
                for way in ways if round_ % 2 == 0 else reversed(ways):
                    _use(way)
                    cpu, database, wall, offers = _flush(workers)
                    offers_seen.add(offers)
                    if round_ >= 2:
                        measured[way]["cpu_ms"].append(cpu)
                        measured[way]["postgresql_cpu_ms"].append(database)
                        measured[way]["wall_ms"].append(wall)
        finally:
            _use("bound")
    if offers_seen != {args.claims}:
        print(f"warning: flushes handed out {sorted(offers_seen)} offers", file=sys.stderr)
    rows = {way: {k: _summary(v) for k, v in measured[way].items()} for way in ways}
    report = {
        "claims_per_flush": args.claims,
        "flushes_per_way": flushes,
        "offers_per_flush": sorted(offers_seen),
        "ways": rows,
        "client_over_bound": {
            key: round(rows["client"][key]["median"] / rows["bound"][key]["median"], 2)
            for key in ("cpu_ms", "postgresql_cpu_ms", "wall_ms")
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"| way | thread CPU ms per {args.claims}-claim flush | PostgreSQL backend CPU ms "
        "| wall ms |"
    )
    print("|---|---|---|---|")
    for way in ways:
        print(
            f"| {way} | "
            + " | ".join(
                f"{rows[way][key]['median']} ({rows[way][key]['min']}–{rows[way][key]['max']})"
                for key in ("cpu_ms", "postgresql_cpu_ms", "wall_ms")
            )
            + " |"
        )
    ratio = report["client_over_bound"]
    print(
        f"client / bound: CPU {ratio['cpu_ms']}×, PostgreSQL CPU {ratio['postgresql_cpu_ms']}×, "
        f"wall {ratio['wall_ms']}×"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
