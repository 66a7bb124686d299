"""Browser pages train FL rounds beside an edge worker, end to end with real processes: Daphne,
Celery (with beat), PostgreSQL, Redis, two headless Chromium worker pages and one `ccgsc-worker`.
Each round invites all three; the pages fetch the weights, the kernel and their public shard
with their worker token, train the 2NN in a Web Worker and upload their updates in checked
chunks; the rounds fold, close and charge in Celery. The final model, downloaded through the
tenant API, is scored here with numpy on the held-out digits."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from billing.models import UsageRecord
from billing.operations import balance_adjust
from jobs.federated import data
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.services.fl_data import TEST_FRACTION
from tenants import services as services_tenants
from tenants.roles import Role
from tenants.tiers import Tier
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import workers_online
from tests.jobs.fl_helpers import fl_job

pytestmark = [pytest.mark.services, pytest.mark.browser, pytest.mark.slow]

ROUNDS = 3
SIZES = [64, 200, 200, 10]  # the demo job's 2NN (jobs/services/fl_validation.py: FlJobSpec)
# The simulator with the same partition (3 clients, 2 label shards each), E = 5, lr = 0.05 and
# FedAvg of all three reaches 0.79-0.87 on the held-out digits after 3 rounds over seeds 3-5;
# the threshold leaves room for the job's own seeds and is far above chance (0.1).
ACCURACY_THRESHOLD = 0.6


def _open_worker_page(browser, url: str, errors: list[str]):  # noqa: ANN001, ANN202
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone's screen
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/contribute/")
    page.get_by_test_id("cores").select_option("1")
    page.get_by_test_id("join").click()
    page.wait_for_function("() => window.ccgscWorker.state().welcomed", timeout=15_000)
    return page


def _predict(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The 2NN's classes for x (f32 [n, 64]): per layer W [in × out] row-major, then b; ReLU
    after every hidden layer (docs/kernel-abi.md)."""
    offset, h = 0, x.astype(np.float64)
    for layer, (a, b) in enumerate(zip(SIZES, SIZES[1:], strict=False)):
        w = weights[offset : offset + a * b].reshape(a, b)
        bias = weights[offset + a * b : offset + a * b + b]
        offset += a * b + b
        h = h @ w + bias
        if layer < len(SIZES) - 2:
            h = np.maximum(h, 0.0)
    assert offset == weights.size
    return h.argmax(axis=1)


def _download(stack, tenant, owner, version: ModelVersion) -> np.ndarray:  # noqa: ANN001
    """The model version's weights through the tenant API, as a tenant would fetch them."""
    raw_key = services_tenants.api_key_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, name="e2e-weights"
    ).raw_key
    request = urllib.request.Request(
        f"{stack.daphne.url}/api/v1/model-versions/{version.pk}/download/",
        headers={"Authorization": f"Api-Key {raw_key}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return np.frombuffer(response.read(), dtype="<f4")


def test_two_pages_and_an_edge_worker_train_the_2nn_on_non_iid_digits(
    fc_stack, browser, tenant, owner
):
    # given a core tenant with credit, two worker pages (phone-sized) and one edge worker online
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    errors: list[str] = []
    pages = [_open_worker_page(browser, fc_stack.daphne.url, errors) for _ in range(2)]
    fc_stack.edge_worker()
    workers_online(3, fc_stack)
    # when an FL job trains the demo's 2NN on a pathological non-IID partition (2 label shards
    # per client), inviting all three each round
    job = fl_job(
        tenant,
        model_kernel="mlp",
        model_sizes=SIZES,
        dataset="digits",
        partition="shards",
        shards_per_client=2,
        partition_clients=3,
        rounds=ROUNDS,
        cohort_size=3,
        min_reports=3,
        round_deadline_seconds=60,
        local_epochs=5,
        learning_rate=0.05,
        seed=4,
    )
    # then a page shows the round it trains, accessibly
    pages[0].wait_for_function(
        "() => window.ccgscWorker.state().rounds.length"
        " || window.ccgscWorker.state().lastRound !== null",
        timeout=30_000,
    )
    job = wait_for_job(job.pk, timeout_s=90, stack=fc_stack)
    # and every round closed with all three updates folded, the pages' among them
    rounds = list(Round.objects.for_tenant(tenant).filter(job=job).order_by("number"))
    assert [r.status for r in rounds] == [RoundStatus.CLOSED] * ROUNDS
    assert [r.reports for r in rounds] == [3] * ROUNDS
    for round_ in rounds:
        included = Participation.objects.for_tenant(tenant).filter(round=round_, included=True)
        kinds = sorted(included.values_list("worker__kind", flat=True))
        assert kinds == ["browser", "browser", "edge"], round_.number
        assert round_.metrics["participants"] == 3
        assert round_.metrics["dropouts"] == 0
    # and each round was charged once, and produced one model version
    assert UsageRecord.objects.for_tenant(tenant).filter(job=job).count() == ROUNDS
    versions = ModelVersion.objects.for_tenant(tenant).filter(job=job).order_by("version")
    assert list(versions.values_list("version", flat=True)) == list(range(ROUNDS + 1))
    # and each page uploaded every round and shows how its last round ended
    for page in pages:
        state = page.evaluate("() => window.ccgscWorker.state()")
        assert state["roundOutcomes"] == {"uploaded": ROUNDS}, state
        assert state["lastRound"]["round"] == ROUNDS
        assert state["lastRound"]["epoch"] == 5
        assert state["lastRound"]["sentBytes"] == state["lastRound"]["totalBytes"] > 0
        outcome = page.get_by_test_id("fl-round-outcome")
        assert outcome.get_attribute("role") == "status"
        assert f"round {ROUNDS}: update sent" in outcome.inner_text()
        # a phone-sized page does not scroll sideways
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, width
    assert not errors, errors
    # and the final model, downloaded by the tenant, classifies the held-out digits
    weights = _download(fc_stack, tenant, owner, versions.last())
    _, test = data.train_test_split(data.load_digits(), test_fraction=TEST_FRACTION, seed=job.seed)
    accuracy = float(np.mean(_predict(weights, test.x) == test.y))
    assert accuracy > ACCURACY_THRESHOLD, (accuracy, json.dumps([r.metrics for r in rounds]))
