"""Differential privacy in FL rounds, on real PostgreSQL with the folds in (eager) Celery: the
clipped, uniformly weighted fold; the noised release and its statistics; ε against dp-accounting;
adaptive clipping across rounds; the invite's clip norm; the budget refusing the next round."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from billing.operations import balance_adjust
from jobs import protocol, selectors
from jobs.aggregation import StreamingFold
from jobs.fl_models import FlConfig, Participation, Round, RoundStatus
from jobs.models import JobStatus, Worker
from jobs.privacy import adaptive_noise_multiplier, clip_l2
from jobs.services.fl_privacy import fl_count_noise_std, fl_privacy_state
from jobs.services.fl_rounds_dp import round_release
from jobs.services.fl_rounds_storage import fold_load
from jobs.services.model_registry import latest_version, model_version_read
from tenants.tiers import Tier
from tests.jobs.fl_helpers import fl_job
from tests.jobs.test_fl_rounds import Uploader, body, open_round, workers

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }


@pytest.fixture
def core(tenant, owner):
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return tenant


SIZES = [64, 100, 10]  # an MLP on digits: d = 7,510, enough coordinates for noise statistics
D = 64 * 100 + 100 + 100 * 10 + 10


def _dp_job(tenant, **fields):
    return fl_job(
        tenant,
        model_kernel="mlp",
        model_sizes=SIZES,
        differential_privacy=True,
        dp_delta=1e-5,
        **fields,
    )


def _send(worker, participation_id: int, update: np.ndarray, *, samples: int, version: int = 0):
    participation = Participation.objects.unscoped().get(pk=participation_id)
    _, done = Uploader(worker, participation).send(
        body(update, samples=samples), base_version=version
    )
    assert done.status_code == 202, done.content


def _update(rng: np.random.Generator, norm: float) -> np.ndarray:
    direction = rng.normal(0.0, 1.0, D)
    return (direction * (norm / np.linalg.norm(direction))).astype(np.float32)


def test_a_dp_round_releases_the_clipped_uniform_mean_plus_gaussian_noise(
    core, django_capture_on_commit_callbacks
):
    # Given: a central DP job, z = 1, C = 0.5, whose budget (ε = 6 at δ = 1e-5) allows one round
    z, clip = 1.0, 0.5
    job = _dp_job(
        core, cohort_size=3, min_reports=3, rounds=3, dp_epsilon=6.0,
        dp_noise_multiplier=z, dp_clip_norm=clip,
    )  # fmt: skip
    assert job.fl_config.dp_rounds_allowed == 1
    round_, who = open_round(job, workers(3, accounted=True))
    assert round_.clip_norm == clip
    # And: the invites ask the clients to clip to C too
    for participation in round_.participations.all():
        assert participation.invite["hyperparameters"]["dp"] == {"clip_norm": clip}
        wire = protocol.round_invite(
            event=participation.invite, kernel_sha256="0" * 64, deadline_ms=1000
        )  # validated against the protocol definition as it is built
        assert wire["hyperparameters"]["dp"] == {"clip_norm": clip}
    w0 = model_version_read(model_version=latest_version(job=job)).astype(np.float64)
    rng = np.random.default_rng(11)
    norms = [2.0, 0.1, 5.0]  # clipped, kept, clipped
    samples = [2, 5, 9]  # DP-FedAvg ignores them: a client cannot buy influence (within its shard)
    updates = [_update(rng, norm) for norm in norms]
    ids = list(who)
    # When: two of the three updates fold
    with django_capture_on_commit_callbacks(execute=True):
        for index in (0, 1):
            _send(who[ids[index]], ids[index], updates[index], samples=samples[index])
    # Then: the fold holds exactly the sum of the clipped updates, each with weight 1
    round_.refresh_from_db()
    fold = fold_load(round=round_)
    clipped = [clip_l2(u.astype(np.float64), clip)[0] for u in updates]
    # Up to float64 rounding: the fold's norm may sum in another order (SIMD width differs by
    # CPU), so a coordinate near zero gets an absolute, not a relative, bound.
    np.testing.assert_allclose(
        fold.weighted_sum(), clipped[0] + clipped[1], rtol=1e-12, atol=1e-15 * clip
    )
    assert np.linalg.norm(clipped[0]) == pytest.approx(clip, rel=1e-12)
    assert fold.total_weight == 2.0
    # When: the third folds and the round closes
    with django_capture_on_commit_callbacks(execute=True):
        _send(who[ids[2]], ids[2], updates[2], samples=samples[2])
    round_.refresh_from_db()
    assert round_.status == RoundStatus.CLOSED
    # Then: version 1 = w0 + (Σ clip(Δ) + N(0, (z·C)²)) / 3; the noise is Gaussian of std z·C
    w1 = model_version_read(model_version=latest_version(job=job)).astype(np.float64)
    noise = (w1 - w0) * 3 - sum(clipped)
    sigma = z * clip
    # The sample std of d normals is within 6 standard errors (σ/√(2d)) of σ; its mean within
    # 6 σ/√d of 0; the share within one σ within 6 binomial standard errors of 68.27 %.
    assert abs(noise.std() - sigma) < 6 * sigma / math.sqrt(2 * D)
    assert abs(noise.mean()) < 6 * sigma / math.sqrt(D)
    inside = float(np.mean(np.abs(noise) < sigma))
    p = math.erf(1 / math.sqrt(2))
    assert abs(inside - p) < 6 * math.sqrt(p * (1 - p) / D)
    assert round_.metrics["dp_clip_norm"] == clip
    assert round_.metrics["dp_noise_std"] == pytest.approx(sigma / 3)
    # And: ε recorded is dp-accounting's for one Gaussian release at z = 1, q = 1
    ledger = dp_accounting.rdp.RdpAccountant()
    ledger.compose(dp_accounting.GaussianDpEvent(z), 1)
    assert round_.epsilon_spent == pytest.approx(ledger.get_epsilon(1e-5), rel=1e-12)
    # And: the next round is refused by the budget, so the job completes with the reason
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert "privacy budget is spent" in job.status_reason
    assert Round.objects.for_tenant(core).filter(job=job).count() == 1
    state = fl_privacy_state(job=job)
    assert (state.rounds_left_in_budget, state.epsilon_spent) == (0, round_.epsilon_spent)
    # And: the director's state carries ε live, valid against the protocol's schema
    live = selectors.job_state(tenant=core, job_id=job.pk)
    assert live["privacy"] == {
        "epsilon_spent": float(f"{round_.epsilon_spent:.6g}"),
        "epsilon_budget": 6.0,
        "delta": 1e-5,
        "rounds_spending": 1,
        "rounds_allowed": 1,
        "rounds_planned": 3,
        "rounds_left": 0,
        "clip_norm": clip,
    }
    protocol.director_state(state=live)  # raises when the schema refuses it


def test_two_rounds_draw_different_noise(core, django_capture_on_commit_callbacks):
    # Given: the same job twice (same seed, same updates)
    releases = []
    for _ in range(2):
        job = _dp_job(
            core, cohort_size=1, min_reports=1, rounds=1, dp_epsilon=6.0,
            dp_noise_multiplier=1.0, dp_clip_norm=0.5, seed=5,
        )  # fmt: skip
        Worker.objects.update(is_online=False)  # the last iteration's worker has left
        _, who = open_round(job, workers(1, accounted=True))
        ((participation_id, worker),) = who.items()
        with django_capture_on_commit_callbacks(execute=True):
            _send(worker, participation_id, np.zeros(D, np.float32), samples=4)
        releases.append(model_version_read(model_version=latest_version(job=job)))
    # Then: the noise is not a function of anything stored (no seed): the versions differ
    assert not np.array_equal(releases[0], releases[1])


def test_adaptive_clipping_moves_c_toward_the_target_quantile(
    core, django_capture_on_commit_callbacks
):
    # Given: adaptive clipping (γ = 0.5), z = 0.5, six reports a round (σ_b = 0.3 > z/2),
    # C starting at 1, and a budget for exactly two rounds
    job = _dp_job(
        core, cohort_size=6, min_reports=6, rounds=2, dp_epsilon=20.0,
        dp_noise_multiplier=0.5, dp_clip_norm=1.0, dp_adaptive_clipping=True,
        dp_target_quantile=0.5,
    )  # fmt: skip
    assert job.fl_config.dp_rounds_allowed == 2
    pool = workers(6, accounted=True)
    first, who = open_round(job, pool)
    rng = np.random.default_rng(2)
    # When: every update of round 1 is longer than C (all clip bits 0)
    with django_capture_on_commit_callbacks(execute=True):
        for participation_id, worker in who.items():
            _send(worker, participation_id, _update(rng, 10.0), samples=5)
    first.refresh_from_db()
    # Then: the noised within-fraction is near 0 (noise σ_b / m = 0.05), so C grows by
    # exp(−η (b̃ − γ)); the next round clips to it and tells the clients
    fraction = first.metrics["dp_within_fraction"]
    assert abs(fraction) < 8 * fl_count_noise_std(config=job.fl_config) / 6
    assert first.clip_norm_next == pytest.approx(math.exp(-0.2 * (fraction - 0.5)))
    assert first.clip_norm_next > 1.0
    second = Round.objects.for_tenant(core).get(job=job, number=2)
    assert second.clip_norm == first.clip_norm_next
    invite = second.participations.first().invite
    assert invite["hyperparameters"]["dp"]["clip_norm"] == second.clip_norm
    # And: the update noise is z_Δ · C (the count takes part of the budget)
    z_delta = adaptive_noise_multiplier(0.5, 0.3)
    assert first.metrics["dp_noise_std"] == pytest.approx(z_delta * 1.0 / 6)
    # When: every update of round 2 is far inside C (all bits 1)
    who = {p.pk: next(w for w in pool if w.pk == p.worker_id) for p in second.participations.all()}
    with django_capture_on_commit_callbacks(execute=True):
        for participation_id, worker in who.items():
            _send(worker, participation_id, _update(rng, 0.01), samples=5, version=1)
    second.refresh_from_db()
    # Then: the fraction is near 1 and C shrinks back toward the quantile
    assert second.status == RoundStatus.CLOSED
    assert abs(second.metrics["dp_within_fraction"] - 1.0) < 8 * 0.3 / 6
    assert second.clip_norm_next < second.clip_norm
    # And: ε after two rounds is dp-accounting's at z (the pair costs one release at z)
    ledger = dp_accounting.rdp.RdpAccountant()
    ledger.compose(dp_accounting.GaussianDpEvent(0.5), 2)
    assert second.epsilon_spent == pytest.approx(ledger.get_epsilon(1e-5), rel=1e-12)


def test_a_round_without_dp_keeps_sample_weights_and_no_clip(
    core, django_capture_on_commit_callbacks
):
    # Given: the same model without DP
    job = fl_job(core, model_kernel="mlp", model_sizes=SIZES, cohort_size=2, min_reports=2)
    round_, who = open_round(job, workers(2))
    assert round_.clip_norm is None
    assert "dp" not in round_.participations.first().invite["hyperparameters"]
    assert selectors.job_state(tenant=core, job_id=job.pk)["privacy"] is None
    w0 = model_version_read(model_version=latest_version(job=job)).astype(np.float64)
    rng = np.random.default_rng(4)
    updates = [_update(rng, 3.0), _update(rng, 3.0)]
    with django_capture_on_commit_callbacks(execute=True):
        for (participation_id, worker), update, samples in zip(
            who.items(), updates, (2, 6), strict=True
        ):
            _send(worker, participation_id, update, samples=samples)
    # Then: the plain sample-weighted FedAvg, no noise
    w1 = model_version_read(model_version=latest_version(job=job)).astype(np.float64)
    expected = w0 + (2 * updates[0].astype(np.float64) + 6 * updates[1]) / 8
    np.testing.assert_allclose(w1, expected, atol=1e-6)


def test_round_release_adds_no_noise_when_the_clients_shares_are_in_the_sum():
    # Given: a distributed-noise round's fold of one zero update (no DB: the release is a read)
    config = FlConfig(
        differential_privacy=True,
        secure_aggregation=True,
        dp_mode="distributed",
        dp_noise_multiplier=2.0,
        dp_clip_norm=1.0,
        min_reports=3,
    )
    fold = StreamingFold(20_000)
    fold.fold("a", np.zeros(20_000, np.float32), 1.0, clip_norm=1.0)
    round_ = Round(clip_norm=1.0)
    # When / then: with the server's noise the mean carries N(0, (z·C)²)
    noised = round_release(round=round_, config=config, fold=fold).mean_delta
    assert abs(noised.std() - 2.0) < 6 * 2.0 / math.sqrt(2 * 20_000)
    # and with the clients' shares in the sum (secure aggregation), the server adds none
    clean = round_release(round=round_, config=config, fold=fold, server_noise=False)
    assert not clean.mean_delta.any()
    assert clean.metrics["dp_mechanism"] == "skellam"
    assert clean.metrics["dp_noise_std"] == 0.0  # an unsaved round has no secure aggregation
