"""Every server strategy in rounds (robust rules over a spill, q-FFL, SCAFFOLD with its control
variates), the cap on declared sample counts, rejections counted on the round, and server-side
evaluation on the held-out set — through the upload protocol, PostgreSQL and (eager) Celery."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from billing.operations import balance_adjust
from jobs import selectors
from jobs.aggregation import (
    QFedAvgFold,
    ScaffoldServer,
    coordinate_median,
    multi_krum,
    norm_bounded_mean,
    trimmed_mean,
)
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.models import JobStatus
from jobs.services.fl_data import held_out_set, partition_sizes
from jobs.services.fl_evaluation import model_version_evaluate
from jobs.services.model_registry import latest_version, model_version_read
from tenants.tiers import Tier
from tests.jobs.fl_helpers import fl_job
from tests.jobs.test_fl_rounds import D, Uploader, body, open_round, shard_size, workers

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


@pytest.fixture
def enterprise(tenant):
    tenant.tier = Tier.ENTERPRISE
    tenant.save(update_fields=["tier"])
    return tenant


def send_all(job, who, updates, *, losses=None, capture=None) -> None:  # noqa: ANN001
    """Each invitee uploads its update declaring its shard's real size; folds run eagerly."""
    with capture(execute=True):
        for participation_id, worker in who.items():
            participation = Participation.objects.for_tenant(job.tenant).get(pk=participation_id)
            data = body(
                updates[participation_id],
                samples=shard_size(job, participation_id),
                loss_sum=(losses or {}).get(participation_id, 1.0),
            )
            assert Uploader(worker, participation).send(data)[1].status_code == 202


ROBUST = [
    ("median", {}, lambda u, w, o: coordinate_median(u)),
    ("trimmed_mean", {"beta": 0.2}, lambda u, w, o: trimmed_mean(u, beta=0.2)),
    ("krum", {"byzantine": 1}, lambda u, w, o: multi_krum(u, byzantine=1)),
    (
        "multi_krum",
        {"byzantine": 1, "selected": 3},
        lambda u, w, o: multi_krum(u, byzantine=1, selected=3, weights=w),
    ),
    ("norm_bounding", {"bound": 0.05}, lambda u, w, o: norm_bounded_mean(u, bound=0.05, weights=w)),
]


@pytest.mark.parametrize(("strategy", "options", "rule"), ROBUST, ids=[r[0] for r in ROBUST])
def test_a_robust_round_aggregates_every_update_with_its_rule(
    enterprise, strategy, options, rule, django_capture_on_commit_callbacks
):
    # Given: a round of five on FL Enterprise, one client sending a huge outlier
    job = fl_job(
        enterprise,
        cohort_size=5,
        min_reports=5,
        rounds=3,
        server_strategy=strategy,
        strategy_options=options,
    )
    round_, who = open_round(job, workers(5))
    w0 = model_version_read(model_version=latest_version(job=job))
    rng = np.random.default_rng(11)
    updates = {p: rng.normal(0, 0.01, D).astype(np.float32) for p in who}
    outlier = next(iter(who))
    updates[outlier] = np.full(D, 50.0, np.float32)
    # When: all five upload and the round closes
    send_all(job, who, updates, capture=django_capture_on_commit_callbacks)
    # Then: the version is w0 + the rule over the five updates (in participation order)
    round_.refresh_from_db()
    assert (round_.status, round_.reports) == (RoundStatus.CLOSED, 5)
    ids = sorted(who)
    stacked = np.stack([updates[p] for p in ids])
    weights = np.array([shard_size(job, p) for p in ids], dtype=np.float64)
    expected = (w0.astype(np.float64) + rule(stacked, weights, options)).astype(np.float32)
    np.testing.assert_array_equal(
        model_version_read(model_version=latest_version(job=job)), expected
    )
    # And: the outlier did not drag the model (every rule bounds it)
    assert np.abs(expected - w0).max() < 1.0


def test_robust_cohorts_are_capped_by_the_tier(enterprise):
    with pytest.raises(ValidationError) as refused:
        fl_job(enterprise, cohort_size=101, min_reports=5, server_strategy="median")
    assert "at most 100 clients per round" in refused.value.message_dict["cohort_size"][0]
    assert fl_job(enterprise, cohort_size=100, min_reports=5, server_strategy="median").pk


def test_a_qffl_round_weights_clients_by_their_own_loss(core, django_capture_on_commit_callbacks):
    # Given: a q-FFL round of three whose clients report different train losses
    job = fl_job(
        core, cohort_size=3, min_reports=3, server_strategy="qffl", strategy_options={"q": 1.0}
    )
    round_, who = open_round(job, workers(3))
    w0 = model_version_read(model_version=latest_version(job=job))
    rng = np.random.default_rng(5)
    updates = {p: rng.normal(0, 0.01, D).astype(np.float32) for p in who}
    losses = dict(zip(who, (0.5, 2.0, 8.0), strict=True))
    # When
    send_all(job, who, updates, losses=losses, capture=django_capture_on_commit_callbacks)
    # Then: the version is q-FedAvg's with each client's mean loss (its loss sum / samples)
    expected = QFedAvgFold(w0, q=1.0, client_learning_rate=job.fl_config.learning_rate)
    for p in sorted(who):
        expected.fold(str(p), updates[p], losses[p] / shard_size(job, p))
    np.testing.assert_allclose(
        model_version_read(model_version=latest_version(job=job)), expected.finish(), atol=1e-7
    )


def test_a_scaffold_round_serves_its_control_variates_and_folds_both_vectors(
    core, django_capture_on_commit_callbacks
):
    # Given: SCAFFOLD on a public partition of 4 clients, a round of two
    job = fl_job(
        core,
        cohort_size=2,
        min_reports=2,
        partition="iid",
        partition_clients=4,
        shards_per_client=None,
        server_strategy="scaffold",
        strategy_options={"global_learning_rate": 0.5},
    )
    pool = workers(2)
    round_, who = open_round(job, pool)
    invites = {p: Participation.objects.for_tenant(core).get(pk=p).invite for p in who}
    # Then: the invite names c (zeros before the first round) by hash, and no cᵢ yet
    first = next(iter(invites.values()))["model"]
    assert "control" in first
    assert "client_control" not in first
    worker_client = Client(HTTP_AUTHORIZATION=f"Worker {pool[0].token}")
    served = worker_client.get(first["control"]["url"])
    assert served.status_code == 200
    assert np.frombuffer(served.content, "<f4").tolist() == [0.0] * D
    assert Client().get(first["control"]["url"]).status_code == 401  # workers only
    unknown = f"/fl/controls/{job.pk}/{'0' * 64}.f32"
    assert worker_client.get(unknown).status_code == 404
    # And: an upload is [Δy ‖ Δc], twice the dense size
    assert next(iter(invites.values()))["upload"]["total_bytes"] == 32 + 8 * D
    # When: both upload [Δy ‖ Δc]
    rng = np.random.default_rng(9)
    vectors = {p: rng.normal(0, 0.01, 2 * D).astype(np.float32) for p in who}
    w0 = model_version_read(model_version=latest_version(job=job))
    with django_capture_on_commit_callbacks(execute=True):
        for p, worker in who.items():
            participation = Participation.objects.for_tenant(core).get(pk=p)
            data = body(vectors[p], samples=shard_size(job, p))
            data = data[:20] + np.uint32(D).tobytes() + data[24:]  # the header's d is the model's
            assert Uploader(worker, participation).send(data)[1].status_code == 202
    # Then: x' = x + η_g·mean Δy and c' = (|S|/N)·mean Δc, with equal weights
    server = ScaffoldServer(total_clients=4, global_learning_rate=0.5)
    mean = np.mean([vectors[p].astype(np.float64) for p in who], axis=0)
    expected = server.step(
        weights=w0,
        mean_delta=mean[:D].astype(np.float32),
        mean_control_delta=mean[D:],
        participants=2,
    )
    np.testing.assert_allclose(
        model_version_read(model_version=latest_version(job=job)), expected, atol=1e-7
    )
    # And: round 2's invites carry the new c, and each trained client's cᵢ = its Δc
    round2 = Round.objects.for_tenant(core).get(job=job, number=2)
    control = server.control_f32(D)
    for participation in round2.participations.all():
        model = participation.invite["model"]
        got = np.frombuffer(worker_client.get(model["control"]["url"]).content, "<f4")
        np.testing.assert_allclose(got, control, atol=1e-7)
        index = participation.invite["data"]["client_index"]
        trained = {invites[p]["data"]["client_index"]: p for p in who}
        if index in trained:
            mine = worker_client.get(model["client_control"]["url"]).content
            assert np.frombuffer(mine, "<f4").tolist() == vectors[trained[index]][D:].tolist()
        else:
            assert "client_control" not in model


def test_a_declared_sample_count_above_the_shard_is_rejected_and_counted(
    core, django_capture_on_commit_callbacks
):
    # Given: a round of three; one client declares one sample more than its shard holds, one
    # sends a NaN
    job = fl_job(core, cohort_size=3, min_reports=1, rounds=5)
    round_, who = open_round(job, workers(3))
    liar, nan_sender, honest = sorted(who)
    cap = shard_size(job, liar)
    assert (
        cap
        == partition_sizes(job)[round_.participations.get(pk=liar).invite["data"]["client_index"]]
    )
    with django_capture_on_commit_callbacks(execute=True):
        lie = Uploader(who[liar], Participation.objects.for_tenant(core).get(pk=liar)).send(
            body(np.zeros(D, np.float32), samples=cap + 1)
        )[1]
        bad = np.zeros(D, np.float32)
        bad[3] = np.inf
        Uploader(who[nan_sender], Participation.objects.for_tenant(core).get(pk=nan_sender)).send(
            body(bad, samples=shard_size(job, nan_sender))
        )
    # Then: the liar is told why (422) and nothing of its update was folded
    assert lie.status_code == 422
    assert lie.json()["rejection"]["code"] == "samples_exceeded"
    liar_row = Participation.objects.for_tenant(core).get(pk=liar)
    assert (liar_row.status, liar_row.rejection_code) == ("rejected", "samples_exceeded")
    assert f"at most {cap}" in liar_row.rejection_message
    round_.refresh_from_db()
    assert round_.reports == 0
    # When: the honest client declares exactly its shard's size, which closes the round
    send_all(
        job,
        {honest: who[honest]},
        {honest: np.ones(D, np.float32) * 0.01},
        capture=django_capture_on_commit_callbacks,
    )
    # Then: the round counts both rejections by code, and the director shows them
    round_.refresh_from_db()
    assert round_.status == RoundStatus.CLOSED
    assert round_.metrics["rejected"] == 2
    assert round_.metrics["rejections"] == {"non_finite": 1, "samples_exceeded": 1}
    assert selectors.fl_curves(tenant=core, job=job)["rejected"] == [2]


def test_each_version_is_evaluated_on_the_held_out_set_and_the_target_stops_the_job(
    core, wasm_built, django_capture_on_commit_callbacks, api_client
):
    # Given: a job whose target accuracy any trained model reaches
    job = fl_job(core, cohort_size=2, min_reports=2, rounds=5, target_accuracy=0.01)
    round_, who = open_round(job, workers(2))
    rng = np.random.default_rng(2)
    updates = {p: rng.normal(0, 0.05, D).astype(np.float32) for p in who}
    # When: the round closes (the evaluation task runs after commit)
    send_all(job, who, updates, capture=django_capture_on_commit_callbacks)
    # Then: the round and version carry the kernel's eval over the held-out 20 %
    round_.refresh_from_db()
    version = latest_version(job=job)
    weights = model_version_read(model_version=version)
    x, y = held_out_set(job)
    logits = x.astype(np.float32) @ weights[: 64 * 10].reshape(64, 10) + weights[64 * 10 :]
    shifted = logits - logits.max(axis=1, keepdims=True)
    losses = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(y)), y]
    assert round_.metrics["eval_samples"] == len(y) > 300
    # (a near-tie may round the other way in the kernel's float32 sums: one sample at most)
    assert round_.metrics["eval_accuracy"] == pytest.approx(
        float(np.mean(logits.argmax(axis=1) == y)), abs=1.5 / len(y)
    )
    assert round_.metrics["eval_loss"] == pytest.approx(float(losses.mean()), rel=1e-4)
    assert version.metrics["eval_accuracy"] == round_.metrics["eval_accuracy"]
    # And: the target is met on evaluation accuracy: the job completes, round 2 ends unused
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert "(evaluation)" in job.status_reason
    round2 = Round.objects.for_tenant(core).get(job=job, number=2)
    assert (round2.status, round2.metrics["reason"]) == (RoundStatus.FAILED, "job_completed")
    # And: a second evaluation is a no-op that returns what was stored
    assert (
        model_version_evaluate(version_id=str(version.pk))["eval_accuracy"]
        == (round_.metrics["eval_accuracy"])
    )
    # And: the API and the director's curves show it
    listed = api_client.get(f"/api/v1/jobs/{job.pk}/rounds/").json()["results"]
    closed = next(r for r in listed if r["number"] == 1)
    assert closed["metrics"]["eval_accuracy"] == round_.metrics["eval_accuracy"]
    curves = selectors.fl_curves(tenant=core, job=job)
    assert curves["eval_accuracy"] == [float(f"{round_.metrics['eval_accuracy']:.6g}")]
