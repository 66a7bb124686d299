"""Distributed DP end to end with real processes: Daphne, Celery (with beat), PostgreSQL, Redis
and four ``ccgsc-worker`` edge workers of account holders in one secure round of a job with
``dp_mode = distributed``. Each worker clips its update, encodes it, adds the invite's Skellam
share (drawn from os.urandom) and masks it; the server unmasks the sum and adds nothing.

The test recomputes every worker's clipped update (training is deterministic), so the noise in
the released model is visible: (new model − old) · survivors − Σ clipped updates. It must have
the spread of the survivors' shares, z·C·√(4/3) (four shares sized for three), and not the
larger z·C·√(4/3 + 1) a server adding its own noise would give; and the ε recorded is the
Skellam accountant's for those four shares at the round's scale.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.privacy import per_client_variance
from jobs.privacy.accounting import epsilon_spent
from jobs.privacy.skellam import skellam_epsilon, skellam_release
from jobs.secagg_models import SecAggPhaseSet, SecAggRound
from jobs.services.model_registry import model_version_read
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import contributors_accounted, workers_online
from tests.e2e.test_fl_secure_rounds import (
    _core_tenant,
    _Registry,
    _retrained_update,
)
from tests.jobs.fl_helpers import fl_job

pytestmark = [pytest.mark.services, pytest.mark.slow]

Z, CLIP, DELTA = 1.0, 0.3, 1e-5


def test_a_distributed_dp_round_carries_the_clients_noise_and_records_its_epsilon(
    fc_stack, tenant, owner
):
    # given four edge workers of account holders
    _core_tenant(tenant, owner)
    for _ in range(4):
        fc_stack.edge_worker()
    workers_online(4, fc_stack)
    contributors_accounted()
    # when a distributed-DP job of one round over all four runs (three survivors suffice)
    job = fl_job(
        tenant,
        dataset="digits",
        partition="iid",
        partition_clients=4,
        rounds=1,
        cohort_size=4,
        min_reports=3,
        round_deadline_seconds=30,
        local_epochs=1,
        learning_rate=0.1,
        secure_aggregation=True,
        seed=11,
        differential_privacy=True,
        dp_mode="distributed",
        dp_epsilon=10.0,
        dp_delta=DELTA,
        dp_noise_multiplier=Z,
        dp_clip_norm=CLIP,
    )
    job = wait_for_job(job.pk, timeout_s=120, stack=fc_stack)
    # then the round closed with the four masked inputs, each sized for m = 3 honest shares
    round_ = Round.objects.for_tenant(tenant).get(job=job)
    assert round_.status == RoundStatus.CLOSED, round_.metrics
    secagg = SecAggRound.objects.for_tenant(tenant).get(round=round_)
    survivors = SecAggPhaseSet.objects.for_tenant(tenant).get(
        secagg_round=secagg, phase="masked_input"
    )
    assert (len(survivors.members), secagg.min_survivors, round_.anonymous_invited) == (4, 3, 0)
    variance = per_client_variance(
        noise_multiplier=Z, clip_norm=CLIP, scale=secagg.scale, min_survivors=3
    )
    participations = list(Participation.objects.for_tenant(tenant).filter(round=round_))
    for participation in participations:
        noise = participation.invite["secagg"]["noise"]
        assert noise == {"mechanism": "skellam", "variance": pytest.approx(variance)}
    assert round_.metrics["dp_mechanism"] == "skellam"
    expected_std = Z * CLIP * math.sqrt(4 / 3)
    assert round_.metrics["dp_noise_std"] == pytest.approx(expected_std / 4)
    # and the released model is the clipped sum plus the four shares, nothing from the server
    versions = ModelVersion.objects.for_tenant(tenant).filter(job=job).order_by("version")
    registry = _Registry(job, versions.first())
    clipped = [_retrained_update(registry, p).astype(np.float64) for p in participations]
    assert all(np.linalg.norm(u) <= CLIP * (1 + 1e-6) for u in clipped)
    w0 = model_version_read(model_version=versions.first()).astype(np.float64)
    w1 = model_version_read(model_version=versions.last()).astype(np.float64)
    noise = 4 * (w1 - w0) - np.sum(clipped, axis=0)
    d = noise.size
    assert abs(noise.mean()) < 6 * expected_std / math.sqrt(d)
    assert abs(noise.std() / expected_std - 1) < 6 / math.sqrt(2 * d)
    with_server_noise = Z * CLIP * math.sqrt(4 / 3 + 1)
    assert noise.std() < (expected_std + with_server_noise) / 2
    # and the ε recorded is the Skellam accountant's for the shares actually in the sum
    release = skellam_release(
        clip_norm=CLIP, scale=secagg.scale, dimension=d, variance=4 * variance
    )
    assert round_.epsilon_spent == pytest.approx(skellam_epsilon([(release, 1)], delta=DELTA))
    gaussian = epsilon_spent(
        noise_multiplier=Z * math.sqrt(4 / 3), sampling_probability=1.0, rounds=1, delta=DELTA
    )
    assert gaussian < round_.epsilon_spent < 1.05 * gaussian
