"""A worker page trains compressed rounds beside edge workers, end to end: Daphne, Celery,
PostgreSQL, Redis, one headless Chromium worker page and two `ccgsc-worker` processes upload top-k
payloads for two rounds, the page keeping its error-feedback residual between them. Every
version must equal what the pure modules compute from the payloads re-encoded here (the page's
bytes are the edge worker's for the same invite: tests/edge_worker/test_training_js_parity.py),
each client's residual replayed round after round."""

from __future__ import annotations

import numpy as np
import pytest

from billing.operations import balance_adjust
from ccgsc_worker import training
from ccgsc_worker.compression import ResidualStore
from jobs.aggregation import SparseUpdate, StreamingFold
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.services.model_registry import model_version_read
from tenants.tiers import Tier
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import workers_online
from tests.e2e.test_fl_browser_workers import _open_worker_page
from tests.e2e.test_fl_edge_compression import D, _client_body
from tests.jobs.fl_helpers import fl_job

pytestmark = [pytest.mark.services, pytest.mark.browser, pytest.mark.slow]

ROUNDS = 2


def test_a_page_and_edge_workers_upload_topk_with_their_residuals(fc_stack, browser, tenant, owner):
    # given an FL Core tenant, one worker page and two edge workers online
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    errors: list[str] = []
    page = _open_worker_page(browser, fc_stack.daphne.url, errors)
    for _ in range(2):
        fc_stack.edge_worker()
    workers_online(3, fc_stack)
    # when a top-k job (10 % kept) runs two rounds inviting all three
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
        learning_rate=0.1,
        compression="topk",
        topk_fraction=0.1,
        seed=12,
    )
    job = wait_for_job(job.pk, timeout_s=120, stack=fc_stack)
    rounds = list(Round.objects.for_tenant(tenant).filter(job=job).order_by("number"))
    assert [r.status for r in rounds] == [RoundStatus.CLOSED] * ROUNDS, fc_stack.logs()
    assert [r.reports for r in rounds] == [3] * ROUNDS
    # then the page's update was folded every round
    for round_ in rounds:
        kinds = Participation.objects.for_tenant(tenant).filter(round=round_, included=True)
        assert sorted(kinds.values_list("worker__kind", flat=True)) == ["browser", "edge", "edge"]
    assert page.evaluate("() => window.ccgscWorker.state().roundOutcomes") == {"uploaded": ROUNDS}
    # and each version is the sparse fold of the payloads, each client's residual carried
    versions = ModelVersion.objects.for_tenant(tenant).filter(job=job).order_by("version")
    weights = [model_version_read(model_version=v) for v in versions]
    residuals: dict[str, ResidualStore] = {}
    for number, round_ in enumerate(rounds, start=1):
        base = weights[number - 1]
        fold = StreamingFold(D)
        for participation in round_.participations.order_by("pk"):
            store = residuals.setdefault(str(participation.worker_id), ResidualStore())
            payload = _client_body(job, participation, base, store)[training.METRICS.size :]
            sparse = SparseUpdate.decode(payload)
            fold.fold_sparse(
                str(participation.pk), sparse.indices, sparse.values, float(participation.samples)
            )
        expected = (base.astype(np.float64) + fold.finish().astype(np.float64)).astype(np.float32)
        np.testing.assert_allclose(weights[number], expected, atol=1e-6)
    assert not errors, errors
