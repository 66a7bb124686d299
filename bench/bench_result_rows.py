#!/usr/bin/env python3
"""A results flush's two reads of assignments, as rows against as model instances.

A group-commit flush of K results first locks the K assignments they name, with their kernels'
output layout, and later reads every returned replica of their tasks, with each worker's channel
(``jobs.dispatch.batch_results._NAMED`` and ``_RETURNED``). The site reads both as rows, with
the ids as one array parameter that PostgreSQL binds. Before, they were ORM querysets: ``pk__in``
quoted every id into the SQL text in Python and each row became two or three model instances
(``select_related``). This runs both ways alternately, in one transaction each, on a throwaway
PostgreSQL database from a migrated template (as ``bench_dispatch.py`` builds it), with K
replicas returned by distinct workers of a running quorum-2 job, and reports the median CPU of
the calling thread per read and the ratio.

Usage: python bench/bench_result_rows.py [--quick] [--results 32] [--repeats 300]
Writes bench/results/result_rows.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("CCGSC_BENCH_DATABASE", "ccgsc_bench_rows")
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_claim_flush import (  # noqa: E402 - the database name is set first
    _fixtures,
    _flush,
    django_database,
)

RESULTS = BENCH / "results" / "result_rows.json"


def _returned_fixture(results: int) -> tuple[list[str], set[int]]:
    """``results`` claimed replicas marked returned (as a flush stores them): their ids as text
    and their tasks."""
    from django.utils import timezone

    from jobs.models import Assignment, AssignmentStatus

    rows = list(
        Assignment.objects.unscoped()
        .order_by("assigned_at", "id")
        .values_list("id", "task_id")[:results]
    )
    Assignment.objects.unscoped().filter(pk__in=[r[0] for r in rows]).update(
        status=AssignmentStatus.RETURNED, returned_at=timezone.now(), output_sha256="0" * 64
    )
    return [str(r[0]) for r in rows], {r[1] for r in rows}


def _ways(ids: list[str], task_ids: set[int]) -> dict[str, dict[str, Callable[[], Any]]]:
    from jobs.dispatch.batch_results import _named, _returned
    from jobs.models import Assignment, AssignmentStatus

    def named_orm() -> dict:
        return {
            str(a.pk): a
            for a in Assignment.objects.unscoped()
            .select_for_update(of=("self",))
            .select_related("job__kernel")
            .filter(pk__in=ids)
            .order_by("pk")
            .only(
                "id",
                "status",
                "task_id",
                "job_id",
                "worker_id",
                "contributor_id",
                "job__kernel__name",
                "job__kernel__output_bytes",
                "job__kernel__reducer",
            )
        }

    def returned_orm() -> list:
        return list(
            Assignment.objects.unscoped()
            .filter(task_id__in=task_ids, status=AssignmentStatus.RETURNED)
            .order_by("returned_at", "id")
            .select_related("worker")
            .only(
                "id",
                "task_id",
                "output_sha256",
                "output",
                "worker_id",
                "contributor_id",
                "worker__channel_name",
            )
        )

    return {
        "named": {"rows": lambda: _named(ids), "models": named_orm},
        "returned": {"rows": lambda: _returned(task_ids), "models": returned_orm},
    }


def _cpu_ms(read: Callable[[], Any], expected: int) -> float:
    from django.db import transaction

    with transaction.atomic():
        began = time.thread_time()
        got = read()
        spent = time.thread_time() - began
    if len(got) != expected:
        raise RuntimeError(f"read {len(got)} rows, expected {expected}")
    return spent * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--results", type=int, default=32, help="results per flush")
    parser.add_argument("--repeats", type=int, default=300, help="measured reads per way")
    parser.add_argument("--quick", action="store_true", help="30 reads per way")
    args = parser.parse_args(argv)
    repeats = 30 if args.quick else args.repeats

    with django_database("resultrows"):
        workers = _fixtures(args.results, args.results)
        _flush(workers)
        ids, task_ids = _returned_fixture(args.results)
        ways = _ways(ids, task_ids)
        measured: dict[str, dict[str, list[float]]] = {
            read: {"rows": [], "models": []} for read in ways
        }
        for repeat in range(repeats + 3):
            for read, by_way in ways.items():
                order = ("rows", "models") if repeat % 2 == 0 else ("models", "rows")
                for way in order:
                    spent = _cpu_ms(by_way[way], args.results)
                    if repeat >= 3:
                        measured[read][way].append(spent)
    report: dict[str, Any] = {"results_per_flush": args.results, "reads_per_way": repeats}
    print(f"| read ({args.results} results) | rows: CPU ms | models: CPU ms | models / rows |")
    print("|---|---|---|---|")
    for read, by_way in measured.items():
        rows, models = (statistics.median(by_way[w]) for w in ("rows", "models"))
        report[read] = {
            "rows_cpu_ms": round(rows, 3),
            "models_cpu_ms": round(models, 3),
            "models_over_rows": round(models / rows, 2),
        }
        print(f"| {read} | {rows:.3f} | {models:.3f} | {models / rows:.1f}× |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
