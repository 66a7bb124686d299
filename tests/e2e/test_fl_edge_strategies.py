"""SCAFFOLD and a robust rule in rounds end to end: three `ccgsc-worker` processes train the real
logreg kernel (SCAFFOLD: with the control variates the site serves, uploading [Δy ‖ Δc]) under
Daphne, Celery, PostgreSQL and Redis; every version must equal what the pure modules
(``ScaffoldServer``, ``coordinate_median``) compute from the same kernel-trained updates,
recomputed here from each participation's invite."""

from __future__ import annotations

import time

import numpy as np
import pytest

from billing.operations import balance_adjust
from ccgsc_worker import training
from jobs import protocol
from jobs.aggregation import ScaffoldServer, coordinate_median
from jobs.federated.client import load_training_kernel
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Round, RoundStatus
from jobs.fl_shards import job_shards, training_kernel_sha256
from jobs.services.fl_rounds_scaffold import control_read
from jobs.services.model_registry import model_version_read
from tenants.tiers import Tier
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import workers_online
from tests.jobs.fl_helpers import fl_job

pytestmark = [pytest.mark.services, pytest.mark.slow]

ROUNDS = 2
D = 650  # logreg [64, 10]


def _client_body(job, participation, weights: np.ndarray) -> bytes:  # noqa: ANN001
    """What the invited edge worker uploaded: its invite as the consumer sent it, the shard the
    site served, the same kernel and the same training code."""
    message = protocol.round_invite(
        event=participation.invite,
        kernel_sha256=training_kernel_sha256("logreg"),
        deadline_ms=0,
    )
    model = message["model"]
    x, y, _, _ = training.decode_shard(job_shards(job)[message["data"]["client_index"]].body)
    control = client_control = None
    if "control" in model:
        control = control_read(job=job, sha256=model["control"]["sha256"]).tobytes()
        if "client_control" in model:
            client_control = control_read(
                job=job, sha256=model["client_control"]["sha256"]
            ).tobytes()
    data = training.train_update(
        load_training_kernel("logreg").runner,
        sizes=list(model["sizes"]),
        weights=weights.astype("<f4").tobytes(),
        x=x,
        y=y,
        hyperparameters=message["hyperparameters"],
        seed=int(message["seed"]),
        time_left=lambda: 60.0,
        control=None if control is None else training.control_correction(control, client_control),
    )
    if control is not None:
        data = training.scaffold_body(
            data, control=control, hyperparameters=message["hyperparameters"]
        )
    return data


def _vectors(data: bytes) -> np.ndarray:
    return np.frombuffer(data[training.METRICS.size :], "<f4").astype(np.float32)


@pytest.mark.parametrize("strategy", ["scaffold", "median"])
def test_edge_workers_run_scaffold_and_a_robust_rule_and_match_the_pure_modules(
    fc_stack, tenant, owner, strategy
):
    # given an FL Enterprise tenant and three edge workers online
    tenant.tier = Tier.ENTERPRISE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    for _ in range(3):
        fc_stack.edge_worker()
    workers_online(3, fc_stack)
    # when the job runs two rounds of three clients, two local epochs each
    job = fl_job(
        tenant,
        dataset="digits",
        partition="iid",
        shards_per_client=None,
        partition_clients=3,
        rounds=ROUNDS,
        cohort_size=3,
        min_reports=3,
        round_deadline_seconds=60,
        local_epochs=2,
        learning_rate=0.1,
        server_strategy=strategy,
        strategy_options={"global_learning_rate": 1.0} if strategy == "scaffold" else {},
        seed=5,
    )
    job = wait_for_job(job.pk, timeout_s=150, stack=fc_stack)
    rounds = list(Round.objects.for_tenant(tenant).filter(job=job).order_by("number"))
    assert [r.status for r in rounds] == [RoundStatus.CLOSED] * ROUNDS, fc_stack.logs()
    assert [r.reports for r in rounds] == [3] * ROUNDS
    # then each version is the pure module's step over the kernel-trained uploads
    versions = ModelVersion.objects.for_tenant(tenant).filter(job=job).order_by("version")
    weights = [model_version_read(model_version=v) for v in versions]
    server = ScaffoldServer(total_clients=3)
    for number, round_ in enumerate(rounds, start=1):
        base = weights[number - 1]
        bodies = [
            _vectors(_client_body(job, p, base)) for p in round_.participations.order_by("pk")
        ]
        stacked = np.stack(bodies)
        if strategy == "scaffold":
            assert stacked.shape == (3, 2 * D)
            mean = stacked.astype(np.float64).mean(axis=0)
            expected = server.step(
                weights=base,
                mean_delta=mean[:D].astype(np.float32),
                mean_control_delta=mean[D:],
                participants=3,
            )
            # the control variate moved, and round 2 trained with it
            assert np.abs(server.control).max() > 0
        else:
            expected = (base.astype(np.float64) + coordinate_median(stacked)).astype(np.float32)
        np.testing.assert_allclose(weights[number], expected, atol=1e-6)
    # and the server evaluated every version on the held-out digits
    deadline = time.monotonic() + 60
    while not all(
        "eval_accuracy" in r.metrics
        for r in Round.objects.for_tenant(tenant).filter(job=job, status=RoundStatus.CLOSED)
    ):
        assert time.monotonic() < deadline, fc_stack.logs()
        time.sleep(0.2)
    final = Round.objects.for_tenant(tenant).get(job=job, number=ROUNDS)
    assert final.metrics["eval_accuracy"] > 0.5, final.metrics
