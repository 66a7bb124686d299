"""Browser pages and edge workers share one secure FL round, end to end with real processes:
Daphne, Celery (with beat), PostgreSQL, Redis, two headless Chromium worker pages signed in as
their contributors and two ``ccgsc-worker`` processes of account holders (a protected cohort
admits few anonymous contributors). Each page advertises its keys on the invite, answers the
share and unmask phases over its socket, trains its shard in a Web Worker and uploads its update
masked; the server unmasks only the sum. The new model is the FedAvg of the four clipped
updates, recomputed here from each client's own training call (the page's training is byte for
byte the edge worker's, tests/edge_worker/test_training_js_parity.py). In a distributed-DP
round the pages also add their Skellam shares (WebCrypto bytes) before masking, and the model
carries the four shares' noise and no server noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from billing.models import UsageRecord
from billing.operations import balance_adjust
from jobs import dispatch
from jobs.federated.client import TrainConfig, client_train, load_training_kernel
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.privacy import clip_l2
from jobs.secagg_models import SecAggPhaseSet, SecAggRound
from jobs.services.fl_data import partition_shards
from jobs.services.model_registry import model_version_read
from tenants.tiers import Tier
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import workers_online
from tests.factories import PASSWORD, UserFactory
from tests.jobs.fl_helpers import fl_job

pytestmark = [pytest.mark.services, pytest.mark.browser, pytest.mark.slow]


def _signed_in_worker_page(browser, url: str, errors: list[str]):  # noqa: ANN001, ANN202
    """A worker page of a contributor with an account: it works with the user's token."""
    user = UserFactory()
    context = browser.new_context()
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/login/")
    page.get_by_label("E-mail").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard/")
    page.goto(url + "/contribute/")
    page.get_by_test_id("cores").select_option("1")
    page.get_by_test_id("join").click()
    page.wait_for_function("() => window.ccgscWorker.state().welcomed", timeout=15_000)
    return page, dispatch.contributor_for_user(user=user)


def _retrained_update(job, participation: Participation) -> np.ndarray:  # noqa: ANN001
    """A client's update recomputed from its stored invite with the platform's own trainer."""
    config = job.fl_config
    invite = participation.invite
    x, y, _ = partition_shards(
        dataset=config.dataset,
        partition=config.partition,
        clients=config.partition_clients,
        seed=job.seed,
        alpha=config.dirichlet_alpha,
        per_client=config.shards_per_client or 2,
    )[invite["data"]["client_index"]]
    start = model_version_read(
        model_version=ModelVersion.objects.for_tenant(job.tenant).get(
            job=job, version=participation.base_version
        )
    )
    hyper = invite["hyperparameters"]
    trained = client_train(
        load_training_kernel(config.model_kernel),
        sizes=tuple(config.model_sizes),
        weights=np.asarray(start, dtype=np.float32),
        x=x,
        y=y,
        config=TrainConfig(
            epochs=hyper["local_epochs"],
            batch_size=hyper["batch_size"],
            learning_rate=hyper["learning_rate"],
            momentum=hyper["momentum"] or 0.0,
            proximal_mu=hyper["proximal_mu"] or 0.0,
        ),
        seed=int(invite["seed"]),
    )
    return trained.update.astype(np.float64)


def test_pages_and_edge_workers_share_a_secure_round_whose_model_is_the_clipped_fedavg(
    fc_stack, browser, tenant, owner
):
    # given a core tenant with credit, two signed-in worker pages and two edge workers of
    # account holders, all online
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    errors: list[str] = []
    pages = [_signed_in_worker_page(browser, fc_stack.daphne.url, errors) for _ in range(2)]
    for _ in range(2):
        contributor = dispatch.contributor_for_user(user=UserFactory())
        fc_stack.edge_worker(token=dispatch.worker_token_issue(contributor=contributor))
    workers_online(4, fc_stack)
    # when a secure job of one round invites all four
    job = fl_job(
        tenant,
        dataset="digits",
        partition="iid",
        partition_clients=4,
        rounds=1,
        cohort_size=4,
        min_reports=4,
        round_deadline_seconds=60,
        local_epochs=1,
        learning_rate=0.1,
        secure_aggregation=True,
        seed=13,
    )
    job = wait_for_job(job.pk, timeout_s=120, stack=fc_stack)
    # then the round closed with the four masked inputs, the pages' among them
    round_ = Round.objects.for_tenant(tenant).get(job=job)
    assert round_.status == RoundStatus.CLOSED, round_.metrics
    assert round_.reports == 4
    participations = list(Participation.objects.for_tenant(tenant).filter(round=round_))
    assert sorted(p.worker.kind for p in participations) == ["browser", "browser", "edge", "edge"]
    page_contributors = {contributor.pk for _, contributor in pages}
    assert page_contributors <= {p.contributor_id for p in participations}
    secagg = SecAggRound.objects.for_tenant(tenant).get(round=round_)
    sets = {
        s.phase: s for s in SecAggPhaseSet.objects.for_tenant(tenant).filter(secagg_round=secagg)
    }
    assert [len(sets[p].members) for p in ("advertise", "share", "masked_input", "unmask")] == [
        4
    ] * 4
    # and each page went through every phase and uploaded its masked update
    for page, _ in pages:
        state = page.evaluate("() => window.ccgscWorker.state()")
        assert state["roundOutcomes"] == {"uploaded": 1}, state
        assert "update sent" in page.get_by_test_id("fl-round-outcome").inner_text()
    assert not errors, errors
    # and the new model is the FedAvg of the four updates clipped to the round's bound
    versions = ModelVersion.objects.for_tenant(tenant).filter(job=job).order_by("version")
    assert list(versions.values_list("version", flat=True)) == [0, 1]
    w0 = model_version_read(model_version=versions.first()).astype(np.float64)
    updates = [_retrained_update(job, p) for p in participations]
    clipped = [np.clip(u, -secagg.bound, secagg.bound) for u in updates]
    assert any(np.any(np.abs(u) > 0) for u in updates)
    np.testing.assert_allclose(
        model_version_read(model_version=versions.last()),
        w0 + np.mean(clipped, axis=0),
        atol=1e-6,
    )
    assert UsageRecord.objects.for_tenant(tenant).filter(job=job).count() == 1


def test_pages_add_their_skellam_shares_in_a_distributed_dp_round(fc_stack, browser, tenant, owner):
    # given the same four clients: two signed-in pages and two edge workers of account holders
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    errors: list[str] = []
    pages = [_signed_in_worker_page(browser, fc_stack.daphne.url, errors) for _ in range(2)]
    for _ in range(2):
        contributor = dispatch.contributor_for_user(user=UserFactory())
        fc_stack.edge_worker(token=dispatch.worker_token_issue(contributor=contributor))
    workers_online(4, fc_stack)
    # when a distributed-DP job (z = 2, C = 0.3, shares sized for 3 survivors) invites all four
    z, clip = 2.0, 0.3
    job = fl_job(
        tenant,
        dataset="digits",
        partition="iid",
        partition_clients=4,
        rounds=1,
        cohort_size=4,
        min_reports=3,
        round_deadline_seconds=60,
        local_epochs=1,
        learning_rate=0.1,
        secure_aggregation=True,
        seed=17,
        differential_privacy=True,
        dp_mode="distributed",
        dp_epsilon=10.0,
        dp_noise_multiplier=z,
        dp_clip_norm=clip,
    )
    job = wait_for_job(job.pk, timeout_s=120, stack=fc_stack)
    # then the pages took part and uploaded masked, noised updates
    round_ = Round.objects.for_tenant(tenant).get(job=job)
    assert round_.status == RoundStatus.CLOSED, round_.metrics
    participations = list(Participation.objects.for_tenant(tenant).filter(round=round_))
    assert sorted(p.worker.kind for p in participations) == ["browser", "browser", "edge", "edge"]
    for page, _ in pages:
        state = page.evaluate("() => window.ccgscWorker.state()")
        assert state["roundOutcomes"] == {"uploaded": 1}, state
    assert not errors, errors
    # and the model moved by the clipped mean plus four shares' noise, z·C·√(4/3) on the sum
    versions = ModelVersion.objects.for_tenant(tenant).filter(job=job).order_by("version")
    w0 = model_version_read(model_version=versions.first()).astype(np.float64)
    w1 = model_version_read(model_version=versions.last()).astype(np.float64)
    clipped = [clip_l2(_retrained_update(job, p), clip)[0] for p in participations]
    noise = 4 * (w1 - w0) - np.sum(clipped, axis=0)
    expected = z * clip * math.sqrt(4 / 3)
    assert abs(noise.mean()) < 6 * expected / math.sqrt(noise.size)
    assert abs(noise.std() / expected - 1) < 6 / math.sqrt(2 * noise.size)
    assert round_.metrics["dp_mechanism"] == "skellam"
    assert round_.epsilon_spent is not None
