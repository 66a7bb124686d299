#!/usr/bin/env python3
"""Validation quality under wrong-answering workers, through the real dispatch services.

In-process, on a throwaway SQLite database: a tenant runs a ``montecarlo_pi`` job while W
simulated workers (one contributor each) claim and return replicas through
``jobs.dispatch.assignment_claim`` / ``result_submit``. A fraction of the workers is bad:
- independent: each bad replica is a different random wrong output;
- colluding: every bad worker returns the same wrong output for a task.
Each round every worker, in a random order, claims one replica; then the round's replicas are
returned in another random order, so bad workers can pair on a task.

Reported per scenario: wrong canonical results among validated tasks, replicas issued per task
(the ideal is the quorum), failed tasks and the job's final status, next to the values the
race model predicts (a task's replicas are independent draws; it validates when ``quorum`` of
them agree; more replicas are added up to ``max_replicas``).

Usage: python bench/bench_validation.py [--quick] [--tasks 300] [--workers 50] [--bad 0.2]
Writes bench/results/validation.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "edge_worker"))
RESULTS = ROOT / "bench" / "results" / "validation.json"
CHUNK = 1000

HELLO = {
    "v": 1,
    "type": "hello",
    "token": "x" * 20,
    "client": {"kind": "edge", "version": "bench"},
    "capabilities": {"cores": 1, "simd": True},
    "slots": 1,
}


@dataclass(frozen=True)
class Scenario:
    name: str
    mode: str  # independent | colluding
    quorum: int
    max_replicas: int | None = None  # None: the service default, five times the quorum (max 20)


def setup_django(db_path: Path) -> None:
    """A fresh SQLite database, migrated, with the built-in kernels."""
    os.environ.update(
        {
            "DATABASE_URL": f"sqlite:///{db_path}",
            "CCGSC_ENV": "test",
            "DJANGO_SETTINGS_MODULE": "ccgsc_site.settings",
        }
    )
    for key in ("REDIS_URL", "AWS_STORAGE_BUCKET_NAME"):
        os.environ.pop(key, None)
    import django

    django.setup()
    logging.disable(logging.INFO)  # the eager Celery tasks log every credit award
    from django.core.management import call_command

    from jobs.kernels import kernel_sync_builtins

    call_command("migrate", verbosity=0, interactive=False)
    kernel_sync_builtins()


def race_model(f: float, quorum: int, max_replicas: int, colluding: bool) -> dict[str, float]:
    """Exact outcome of one task when each replica is bad with probability ``f``.

    States (honest, bad) results so far; the task validates when ``quorum`` agree (bad ones
    agree only when colluding) and fails once ``max_replicas`` replicas disagree.
    """
    wrong = failed = replicas = 0.0
    frontier = {(0, 0): 1.0}
    while frontier:
        nxt: dict[tuple[int, int], float] = {}
        for (h, b), p in frontier.items():
            for honest, q in ((True, 1 - f), (False, f)):
                if q == 0:
                    continue
                h2, b2 = h + honest, b + (not honest)
                n = h2 + b2
                pq = p * q
                if h2 >= quorum:
                    replicas += pq * n
                elif colluding and b2 >= quorum:
                    replicas += pq * n
                    wrong += pq
                elif n >= max(max_replicas, quorum) and n >= quorum:
                    # every replica reported and none agree: fail at the cap
                    replicas += pq * n
                    failed += pq
                else:
                    nxt[(h2, b2)] = nxt.get((h2, b2), 0.0) + pq
        frontier = nxt
    validated = 1 - failed
    return {
        "wrong_among_validated": wrong / validated if validated else 0.0,
        "replicas_per_task": replicas,
        "task_failure_probability": failed,
    }


def run_scenario(
    sc: Scenario, *, tasks: int, workers: int, bad_fraction: float, seed: int
) -> dict[str, Any]:
    """One job through the services; returns its quality figures."""
    from ccgsc_worker import abi
    from ccgsc_worker.abi import OutputError
    from ccgsc_worker.kernel import KernelRunner
    from jobs import dispatch, services
    from jobs.kernels import kernel_module_bytes
    from jobs.models import Assignment, Job, Kernel, Task, TaskStatus
    from tenants import services as tenant_services
    from tenants.models import User
    from tenants.roles import Role
    from tenants.tiers import Tier

    rng = random.Random(seed)  # noqa: S311 - simulation
    user = User.objects.create_user(email=f"v-{seed}-{sc.name}-{time.time_ns()}@example.com")
    tenant = tenant_services.tenant_create(name="Validation", owner=user, tier=Tier.ENTERPRISE)
    kernel = Kernel.objects.get(name="montecarlo_pi", tenant__isnull=True)
    job = services.job_create(
        tenant=tenant,
        actor=user,
        actor_role=Role.OWNER,
        spec=services.JobSpec(
            name=sc.name,
            kernel=kernel,
            range_start=0,
            range_end=tasks * CHUNK,
            chunk_size=CHUNK,
            params={},
            seed=seed,
            quorum=sc.quorum,
            max_replicas=sc.max_replicas,
        ),
    )
    runner = KernelRunner(kernel_module_bytes(kernel), kernel.sha256)
    truth: dict[tuple[int, int], bytes] = {}

    def true_output(lo: int, hi: int) -> bytes:
        if (lo, hi) not in truth:
            truth[(lo, hi)] = runner.run(abi.encode_input(lo, hi, job.seed, job.params))
        return truth[(lo, hi)]

    def honest(offer: dispatch.Offer) -> bytes:
        return true_output(offer.lo, offer.hi)

    def wrong(offer: dispatch.Offer) -> bytes:
        if sc.mode == "colluding":  # the same wrong answer for a task from every bad worker
            return hashlib.sha256(f"collude {offer.lo} {offer.hi}".encode()).digest()[:16]
        return rng.randbytes(16)

    pool = []
    n_bad = round(workers * bad_fraction)
    for i in range(workers):
        contributor, _ = dispatch.contributor_create_anonymous()
        session = dispatch.worker_connect(contributor=contributor, hello=HELLO, channel_name="")
        pool.append((session, i < n_bad))

    issued = 0
    rounds = 0
    reduce_errors: list[str] = []
    while rounds < 50 * sc.quorum * (tasks // workers + 10):
        rounds += 1
        claimed = []
        for session, is_bad in rng.sample(pool, len(pool)):
            for offer in dispatch.assignment_claim(worker_id=session.worker_id, count=1):
                claimed.append((session, is_bad, offer))
        if not claimed:
            break
        issued += len(claimed)
        rng.shuffle(claimed)
        for session, is_bad, offer in claimed:
            output = wrong(offer) if is_bad else honest(offer)
            try:
                dispatch.result_submit(
                    contributor_id=session.contributor_id,
                    assignment_id=str(offer.assignment_id),
                    output=output,
                    sha256=hashlib.sha256(output).hexdigest(),
                    elapsed_ms=1,
                )
            except OutputError as exc:  # the eager reduction of the finished job failed
                reduce_errors.append(str(exc))

    job = Job.objects.unscoped().get(pk=job.pk)
    real = Task.objects.unscoped().filter(job=job, known_answer_sha256="")
    validated = wrong_canonical = 0
    for task in real.filter(status=TaskStatus.VALIDATED):
        validated += 1
        if task.canonical_sha256 != hashlib.sha256(true_output(task.lo, task.hi)).hexdigest():
            wrong_canonical += 1
    real_replicas = Assignment.objects.unscoped().filter(job=job, task__known_answer_sha256="")
    decided = real.filter(status__in=[TaskStatus.VALIDATED, TaskStatus.FAILED])
    replicas_decided = real_replicas.filter(task__in=decided).count()
    max_replicas = job.max_replicas
    model = race_model(bad_fraction, sc.quorum, max_replicas, sc.mode == "colluding")
    failed = real.filter(status=TaskStatus.FAILED).count()
    return {
        "scenario": sc.name,
        "mode": sc.mode,
        "quorum": sc.quorum,
        "max_replicas": max_replicas,
        "seed": seed,
        "tasks": tasks,
        "workers": workers,
        "bad_workers": n_bad,
        "job_status": job.status,
        "job_status_reason": job.status_reason,
        "reduce_errors": reduce_errors,
        "tasks_validated": validated,
        "tasks_failed": failed,
        "tasks_cancelled": real.filter(status=TaskStatus.CANCELLED).count(),
        "wrong_canonical": wrong_canonical,
        "wrong_fraction": wrong_canonical / validated if validated else None,
        "replicas_issued": issued,
        "replicas_per_decided_task": replicas_decided / max(decided.count(), 1),
        "ideal_replicas_per_task": sc.quorum,
        "model": model,
        "model_job_failure_probability": 1 - (1 - model["task_failure_probability"]) ** tasks,
    }


SCENARIOS = [
    Scenario("independent q2", "independent", 2),
    Scenario("colluding q2", "colluding", 2),
    Scenario("independent q2 max5 (old default)", "independent", 2, 5),
    Scenario("independent q3", "independent", 3),
    Scenario("colluding q3", "colluding", 3),
]


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pool the seeds of each scenario."""
    out = []
    for sc in SCENARIOS:
        rs = [r for r in runs if r["scenario"] == sc.name]
        if not rs:
            continue
        validated = sum(r["tasks_validated"] for r in rs)
        wrong = sum(r["wrong_canonical"] for r in rs)
        out.append(
            {
                "scenario": sc.name,
                "runs": len(rs),
                "max_replicas": rs[0]["max_replicas"],
                "tasks": sum(r["tasks"] for r in rs),
                "validated": validated,
                "wrong": wrong,
                "wrong_fraction": wrong / validated if validated else math.nan,
                "replicas_per_task": sum(r["replicas_per_decided_task"] for r in rs) / len(rs),
                "ideal": sc.quorum,
                "failed": sum(r["tasks_failed"] for r in rs),
                "cancelled": sum(r["tasks_cancelled"] for r in rs),
                "jobs_failed": sum(r["job_status"] == "failed" for r in rs),
                "job_end_states": dict(Counter(r["job_status"] for r in rs)),
                "reduce_errors": sum(bool(r["reduce_errors"]) for r in rs),
                "model": rs[0]["model"],
                "model_job_failure_probability": rs[0]["model_job_failure_probability"],
            }
        )
    return out


def table(rows: list[dict[str, Any]], bad: float) -> str:
    """Markdown table of the pooled scenarios."""
    head = [
        "scenario", "max replicas", "tasks (jobs)", "validated", "wrong canonical",
        "model wrong", "replicas/task (ideal)", "model replicas/task", "tasks failed",
        "tasks cancelled", "jobs failed", "model P(job fails)", "job end states",
    ]  # fmt: skip
    lines = [
        f"{bad:.0%} of the workers bad; replicas/task counts validated and failed tasks.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        m = r["model"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["scenario"],
                    str(r["max_replicas"]),
                    f"{r['tasks']} ({r['runs']})",
                    str(r["validated"]),
                    f"{r['wrong']} ({r['wrong_fraction']:.1%})",
                    f"{m['wrong_among_validated']:.1%}",
                    f"{r['replicas_per_task']:.2f} ({r['ideal']})",
                    f"{m['replicas_per_task']:.2f}",
                    str(r["failed"]),
                    str(r["cancelled"]),
                    f"{r['jobs_failed']}/{r['runs']}",
                    f"{r['model_job_failure_probability']:.0%}",
                    ", ".join(f"{k} ×{v}" for k, v in r["job_end_states"].items())
                    + (f" ({r['reduce_errors']} reduce errors)" if r["reduce_errors"] else ""),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer tasks")
    parser.add_argument("--tasks", type=int, help="tasks per job (default 300, quick 150)")
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--bad", type=float, default=0.2, help="fraction of bad workers")
    parser.add_argument("--seeds", type=int, help="jobs per scenario (default 3, quick 1)")
    args = parser.parse_args(argv)
    tasks = args.tasks or (150 if args.quick else 300)
    seeds = args.seeds or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="ccgsc-validation-") as tmp:
        setup_django(Path(tmp) / "bench.sqlite3")
        runs = []
        for sc in SCENARIOS:
            for seed in range(1, seeds + 1):
                print(f"validation: {sc.name} seed {seed} ...", file=sys.stderr)
                runs.append(
                    run_scenario(
                        sc, tasks=tasks, workers=args.workers, bad_fraction=args.bad, seed=seed
                    )
                )
        from django.db import connections

        connections.close_all()
    rows = aggregate(runs)
    print(table(rows, args.bad))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"quick": args.quick, "bad_fraction": args.bad, "summary": rows, "runs": runs},
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
