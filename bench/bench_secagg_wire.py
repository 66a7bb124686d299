#!/usr/bin/env python3
"""Server unmask time of one secure FL round over the wire path against the pure path.

One round of n = 100 clients and d ≈ 100,000 parameters (an MLP 64-1340-10 on the digits,
d = 100,510: the round's dimension is the model's parameter count) runs through the
services on a fresh PostgreSQL database: 100 edge-worker wire clients (in this process) advertise,
share keys, mask their updates and upload them through the chunked upload API (folded as a
modular sum, eager Celery), then reveal their shares. Timed, once each (the machine is shared):

- wire: ``secagg_unmask`` as Celery runs it: secrets rebuilt from the shares in PostgreSQL, the
  masked sum read from storage, masks removed, the aggregate decoded, and the ordinary round
  close (server strategy step, model version to storage, metering);
- wire, split: the same with the ranges split in 4 (``secagg_unmask_range`` per range, run one
  after the other here: the split's overhead, not its parallelism);
- pure: ``SecAggServer.close_unmask`` + ``unmask_range`` on the same round, in memory.

Usage: python bench/bench_secagg_wire.py [--dropout 0.1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "edge_worker")]
N = 100
SIZES = [64, 1340, 10]  # an MLP on the digits: d = 100,510
CHUNK = 256 * 1024


def _setup() -> None:
    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ccgsc_bench_secagg")
    os.environ["CCGSC_ENV"] = "test"
    os.environ.pop("REDIS_URL", None)  # eager Celery, in-memory layers: only the DB is real
    os.environ["DJANGO_SETTINGS_MODULE"] = "ccgsc_site.settings"
    import django

    django.setup()


def _upload(token: str, pid: int, data: bytes) -> None:
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Worker {token}")
    created = client.post(
        "/fl/uploads/",
        {
            "participation": pid,
            "total_bytes": len(data),
            "chunk_size": CHUNK,
            "sha256": hashlib.sha256(data).hexdigest(),
            "base_version": 0,
        },
        content_type="application/json",
    ).json()
    for index in range(created["chunk_count"]):
        chunk = data[index * CHUNK : (index + 1) * CHUNK]
        client.put(
            f"/fl/uploads/{created['upload']}/chunks/{index}",
            chunk,
            content_type="application/octet-stream",
            headers={"X-Chunk-SHA256": hashlib.sha256(chunk).hexdigest()},
        )
    assert client.post(f"/fl/uploads/{created['upload']}/complete").status_code == 202


def run(dropout: float, split: bool) -> dict:
    """One round through the services; the unmask timings."""
    import numpy as np

    from billing.operations import balance_adjust
    from ccgsc_worker.secagg.wire import WireClient, masked_body
    from jobs import dispatch, realtime
    from jobs.secagg import unmask_range
    from jobs.secagg_models import SecAggPhase, SecAggRound
    from jobs.services import fl_secagg, fl_secagg_phases, fl_secagg_state, fl_secagg_unmask
    from jobs.services.fl_rounds import round_open
    from jobs.services.fl_secagg_fold import masked_sum_load
    from jobs.services.model_registry import latest_version
    from tenants.models import Role
    from tenants.tiers import Tier
    from tests.factories import MembershipFactory, UserFactory, WorkerFactory
    from tests.jobs.fl_helpers import fl_job

    owner = UserFactory()
    tenant = MembershipFactory(user=owner, role=Role.OWNER).tenant
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(
        tenant=tenant, amount_cents=50_000, actor=owner, reason="bench", promotional=True
    )
    job = fl_job(
        tenant,
        model_kernel="mlp",
        model_sizes=SIZES,
        cohort_size=N,
        min_reports=3,
        secure_aggregation=True,
        round_deadline_seconds=600,
        rounds=1,
        dataset="digits",
        partition="iid",
        partition_clients=N,
    )
    d = job.fl_config.parameter_count
    from jobs.models import Worker

    Worker.objects.update(is_online=False)  # the previous run's cohort
    workers = [WorkerFactory(capabilities={"simd": True}) for _ in range(N)]
    tokens = {w.pk: dispatch.worker_token_issue(contributor=w.contributor) for w in workers}
    queued: list[int] = []
    fl_secagg_phases._queue_unmask = queued.append  # noqa: SLF001 - time the task ourselves
    with realtime.sends_collected() as sent:
        round_open(job=job)
    invites = {m["participation"]: m for _, m in sent if m["type"] == "worker.round_invite"}
    clients = {
        pid: WireClient(
            job=m["job"], round_number=m["round"], participation=pid, block=m["secagg"], dimension=d
        )
        for pid, m in invites.items()
    }
    from jobs.fl_models import Participation

    contributor = dict(
        Participation.objects.for_tenant(tenant)
        .filter(pk__in=list(clients))
        .values_list("pk", "contributor_id")
    )
    worker_of = dict(
        Participation.objects.for_tenant(tenant)
        .filter(pk__in=list(clients))
        .values_list("pk", "worker")
    )
    inbox: dict[int, dict] = {}

    def send(pid: int, message: dict) -> None:
        with realtime.sends_collected() as out:
            fl_secagg.secagg_message_receive(contributor_id=contributor[pid], message=message)
        for _, event in out:
            if event["type"] == "worker.secagg":
                inbox[(event["fields"]["participation"], event["kind"])] = {
                    "type": event["kind"],
                    **event["fields"],
                }

    rng = np.random.default_rng(1)
    pids = sorted(clients)
    dropped = set(pids[: int(dropout * N)])
    for pid in pids:
        send(pid, clients[pid].advertise())
    for pid in pids:
        send(pid, clients[pid].on_keys(inbox[(pid, "secagg_keys")]))
    header = struct.pack("<IIdIId", 0, 10, 1.0, 5, d, 0.0)
    plain = np.zeros(d)
    for pid in pids:
        clients[pid].on_ciphertexts(inbox[(pid, "secagg_ciphertexts")])
        if pid in dropped:
            continue
        update = rng.normal(0, 0.01, d).astype(np.float32)
        plain += update
        with realtime.sends_collected() as out:
            body = masked_body(header, clients[pid].mask_update(update))
            _upload(tokens[worker_of[pid]], pid, body)
        for _, event in out:
            if event["type"] == "worker.secagg":
                inbox[(event["fields"]["participation"], event["kind"])] = {
                    "type": event["kind"],
                    **event["fields"],
                }
    if dropped:  # the masked-input phase waits for them until its deadline
        round_id = SecAggRound.objects.for_tenant(tenant).get(round__job=job).round_id
        secagg = SecAggRound.objects.for_tenant(tenant).get(round_id=round_id)
        with realtime.sends_collected() as out:
            fl_secagg_phases.secagg_phase_close(
                round_id=round_id,
                phase=SecAggPhase.MASKED_INPUT,
                now=secagg.phase_deadline + timedelta(seconds=1),
            )
        for _, event in out:
            fields = event.get("fields", {})
            inbox[(fields.get("participation"), event.get("kind"))] = {
                "type": event.get("kind"),
                **fields,
            }
    for pid in pids:
        if pid not in dropped:
            send(pid, clients[pid].on_unmask(inbox[(pid, "secagg_unmask")]))
    secagg = SecAggRound.objects.for_tenant(tenant).get(round_id=queued[0])
    assert secagg.phase == SecAggPhase.UNMASKING
    # the pure path, on the same round's shares and masked sum
    server = fl_secagg_state.server_for(secagg=secagg, job=job, until=SecAggPhase.UNMASK)
    masked = masked_sum_load(secagg=secagg, dimension=d)
    start = time.perf_counter()
    plan = server.close_unmask()
    reconstruct_s = time.perf_counter() - start
    total = unmask_range(plan, masked)
    pure_s = time.perf_counter() - start
    # the wire path, as Celery runs it
    before = latest_version(job=job)
    if split:
        fl_secagg_unmask.UNMASK_RANGE_COORDINATES = -(-d // 4)
    import cProfile
    import pstats

    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    fl_secagg_unmask.secagg_unmask(round_id=secagg.round_id)
    profile.disable()
    wire_s = time.perf_counter() - start
    stats = pstats.Stats(profile)
    if os.environ.get("BENCH_PROFILE"):
        stats.sort_stats("cumulative").print_stats(25)
    parts = {
        name: stats.stats[key][3]
        for key in stats.stats
        for name in ("server_for", "close_unmask", "_write_range", "_finalise", "round_close")
        if key[2] == name
    }
    # Eager Celery runs the tasks queued after commit inline (crediting 100 contributors in the
    # ledger): in production they are other tasks, not part of unmasking.
    after_commit = sum(
        stats.stats[key][3]
        for key in stats.stats
        if key[2] == "delay" and key[0].endswith("celery/app/task.py")
    )
    secagg.refresh_from_db()
    assert secagg.phase == SecAggPhase.DONE, secagg.phase
    survivors = N - len(dropped)
    decoded = total.view(np.int32) / secagg.scale
    error = float(np.max(np.abs(decoded - plain)))
    assert error <= survivors / secagg.scale + 1e-6, error
    assert latest_version(job=job).version == before.version + 1
    return {
        "n": N,
        "d": d,
        "dropout": dropout,
        "split_ranges": 4 if split else 1,
        "pure_s": round(pure_s, 3),
        "pure_reconstruct_s": round(reconstruct_s, 3),
        "wire_s": round(wire_s - after_commit, 3),
        "after_commit_tasks_s": round(after_commit, 3),
        "wire_parts_s": {name: round(seconds, 3) for name, seconds in parts.items()},
        "max_abs_error": error,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dropout", type=float, default=0.1)
    args = parser.parse_args(argv)
    _setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    results = []
    try:
        for split in (False, True):
            results.append(run(args.dropout, split))
            print(json.dumps(results[-1]), flush=True)  # noqa: T201 - the benchmark's output
    finally:
        connection.creation.destroy_test_db(name, verbosity=0)
    out = ROOT / "bench" / "results" / "secagg_wire.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
