#!/usr/bin/env python3
"""Ledger throughput on PostgreSQL: what one charge costs, alone and under contention.

Creates a throwaway database (ccgsc_bench_ledger), migrates it, then times:
  1. bare entries (two postings each) posted one after another,
  2. the full charge path of a metered event (usage record → entry under the balance lock),
  3. the same entries from several threads against ONE tenant balance (the contended case).
Prints a markdown table and writes bench/results/ledger.json.

Usage: python bench/bench_ledger.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DB_NAME = "ccgsc_bench_ledger"
ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def fresh_database() -> str:
    """Drop and create the benchmark database; return its URL."""
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{DB_NAME}"


def setup_django(url: str) -> None:
    """Point Django at the benchmark database and migrate it."""
    os.environ.update(
        {
            "DATABASE_URL": url,
            "CCGSC_ENV": "test",
            "CCGSC_LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "ccgsc_site.settings",
        }
    )
    os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 500 if args.quick else 3000
    threads = 4
    setup_django(fresh_database())
    from django.db import connection

    from billing import ledger, metering
    from billing.ledger import Line
    from billing.models import AccountKind, EntryKind, UsageKind, UsageRecord
    from tenants.models import Tenant
    from tenants.tiers import Tier

    tenant = Tenant.objects.create(name="bench", slug="bench", tier=Tier.CORE)
    balance = ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant)
    revenue = ledger.account_get(AccountKind.PLATFORM_REVENUE)
    clearing = ledger.account_get(AccountKind.STRIPE_CLEARING)
    ledger.entry_post(
        key="seed", kind=EntryKind.TOPUP, lines=[Line(balance, 10**12), Line(clearing, -(10**12))]
    )
    results = []

    started = time.perf_counter()
    for i in range(n):
        ledger.entry_post(
            key=f"bare:{i}",
            kind=EntryKind.CHARGE,
            lines=[Line(balance, -1), Line(revenue, 1)],
            floors={balance.pk: 0},
        )
    elapsed = time.perf_counter() - started
    results.append(
        {"case": "bare entry (2 postings), sequential", "entries": n, "seconds": elapsed}
    )

    started = time.perf_counter()
    for i in range(n):
        # the real path: the record's on-commit hook charges it (Celery runs eagerly here)
        metering.usage_emit(
            tenant=tenant, kind=UsageKind.FL_ROUND, quantity=1, key=f"round:{i}", amount_cents=50
        )
    elapsed = time.perf_counter() - started
    results.append(
        {
            "case": "metered round charge (usage record + entry), sequential",
            "entries": n,
            "seconds": elapsed,
        }
    )

    per_thread = n // threads

    def contend(worker: int) -> None:
        try:
            for i in range(per_thread):
                ledger.entry_post(
                    key=f"contended:{worker}:{i}",
                    kind=EntryKind.CHARGE,
                    lines=[Line(balance, -1), Line(revenue, 1)],
                    floors={balance.pk: 0},
                )
        finally:
            connection.close()

    workers = [threading.Thread(target=contend, args=(w,)) for w in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    results.append(
        {
            "case": f"bare entry, {threads} threads on one balance",
            "entries": per_thread * threads,
            "seconds": elapsed,
        }
    )

    charged = UsageRecord.objects.for_tenant(tenant).filter(status="charged").count()
    assert charged == n, f"{charged} of {n} metered rounds charged"
    report = ledger.reconcile()
    print("| case | entries | entries/s | postings/s | ms per entry |")
    print("|---|---|---|---|---|")
    for row in results:
        rate = row["entries"] / row["seconds"]
        row.update(
            entries_per_s=round(rate, 1),
            postings_per_s=round(2 * rate, 1),
            ms_per_entry=round(1000 / rate, 3),
        )
        print(
            f"| {row['case']} | {row['entries']} | {row['entries_per_s']} | {row['postings_per_s']} | {row['ms_per_entry']} |"
        )
    print(f"\nbooks reconcile after the run: {report.ok}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ledger.json").write_text(
        json.dumps({"results": results, "reconciled": report.ok}, indent=2)
    )
    connection.close()
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


if __name__ == "__main__":
    main()
