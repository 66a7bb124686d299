"""Buffered-async FL (FedBuff) end to end with real processes: Daphne, Celery (with beat),
PostgreSQL, Redis and three ``ccgsc-worker`` processes, one of them on a slow uplink. Fast
workers fill the buffers; the slow one's updates arrive versions later, fold into a later
buffer discounted by their staleness, and the model still converges on non-IID digits."""

from __future__ import annotations

import numpy as np
import pytest

from billing import ledger
from billing.models import AccountKind
from billing.operations import balance_adjust
from jobs.federated import data
from jobs.federated.client import evaluate, load_training_kernel
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Participation
from jobs.models import Worker
from jobs.services.model_registry import model_version_read
from tenants.tiers import Tier
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import (
    assert_charged_and_credited_once,
    assert_versions_recompute,
    closed_rounds,
    wait_until,
)
from tests.jobs.fl_helpers import fl_job

pytestmark = [pytest.mark.services, pytest.mark.slow]

VERSIONS = 12
BUFFER = 2
STALENESS_BOUND = 20  # above any staleness 12 versions can reach: stale updates fold
# The threshold the test states: held-out accuracy of the last version on the 20 % of digits
# no client trained on, far above chance (0.1). An offline replay of this set-up (3 clients,
# K = 2, each update 0 to 7 versions stale at random, FedBuff's step) gives 0.84-0.92 at
# version 12 over 16 draws; with Dirichlet(0.5) the same replay fell to 0.70, and a run of this
# test to 0.57: buffers of two clients that skewed swing too far to state a threshold.
ACCURACY_THRESHOLD = 0.7
# 2,632-byte logreg updates at 2,600 bytes/s: the slow worker's upload takes about 1 s, while
# the fast workers make a version every ~0.2 s on an idle machine. Its uploads must still land
# before the job's last version (12 versions took ~2.1 s once hellos and invites were batched):
# at 800 bytes/s (3.3 s) none did, and the stale fold this test is about never happened.
SLOW_UPLINK = ("--max-upload-bytes-per-second", "2600")


def test_buffered_async_with_a_slow_worker_converges_and_weighs_stale_updates(
    fc_stack, tenant, owner
):
    # given a funded FL Core tenant, two fast edge workers and one on a slow uplink
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    balance = ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant).balance_cents
    fc_stack.edge_worker()
    fc_stack.edge_worker()
    slow = fc_stack.edge_worker(extra_args=SLOW_UPLINK)
    wait_until(
        lambda: Worker.objects.filter(is_online=True).count() >= 3,
        timeout_s=60,
        what="three workers online",
        logs=fc_stack.logs,
    )
    # when an async job (buffer K = 2, polynomial staleness weighting) trains logistic
    # regression on a label-skewed non-IID partition (Dirichlet α = 1 over 3 clients: each
    # holds a few dominant digits and almost none of others)
    job = fl_job(
        tenant,
        dataset="digits",
        partition="dirichlet",
        dirichlet_alpha=1.0,
        partition_clients=3,
        rounds=VERSIONS,
        cohort_size=3,
        round_deadline_seconds=60,
        local_epochs=2,
        learning_rate=0.1,
        mode="async",
        buffer_size=BUFFER,
        staleness_bound=STALENESS_BOUND,
        staleness_weighting="polynomial",
        seed=5,
    )
    job = wait_for_job(job.pk, timeout_s=120, stack=fc_stack)
    # then every buffer closed with K updates and became a version
    rounds = closed_rounds(job)
    assert len(rounds) == VERSIONS
    assert {r.reports for r in rounds} == {BUFFER}
    versions = ModelVersion.objects.for_tenant(tenant).filter(job=job).order_by("version")
    assert list(versions.values_list("version", flat=True)) == list(range(VERSIONS + 1))
    # and the slow worker's updates arrived after their own buffer had closed: each was folded
    # into a later buffer with its staleness recorded, weighted samples · (1 + s)^-0.5
    folded = Participation.objects.for_tenant(tenant).filter(round__job=job, included=True)
    assert folded.count() == VERSIONS * BUFFER
    stale = folded.filter(staleness__gt=0).select_related("round", "folded_round")
    assert stale.filter(contributor_id=slow.contributor_id).exists(), list(
        folded.values_list("contributor_id", "round__number", "folded_round__number", "staleness")
    )
    for participation in folded.select_related("round", "folded_round"):
        s = participation.staleness
        assert s == participation.folded_round.metrics["base_version"] - participation.base_version
        assert participation.fold_weight == pytest.approx(participation.samples * (1 + s) ** -0.5)
    for participation in stale:
        assert participation.folded_round.number > participation.round.number
    staleness_mean = [r.metrics["staleness_mean"] for r in rounds]
    assert max(staleness_mean) > 0
    # and every version is exactly the staleness-weighted FedAvg of the updates its buffer took
    assert_versions_recompute(job)
    # and each buffer was charged once, crediting exactly the contributors it folded
    assert_charged_and_credited_once(job, balance_before_cents=balance, logs=fc_stack.logs)
    # and the last version classifies the held-out digits above the stated threshold
    _, test = data.train_test_split(data.load_digits(), test_fraction=0.2, seed=job.seed)
    kernel = load_training_kernel("logreg")
    curve = [
        evaluate(
            kernel,
            sizes=(64, 10),
            weights=np.asarray(model_version_read(model_version=version), dtype=np.float32),
            x=test.x,
            y=test.y,
        ).accuracy
        for version in versions
    ]
    folds = list(folded.values_list("round__number", "folded_round__number", "staleness"))
    assert curve[-1] > ACCURACY_THRESHOLD, f"accuracy by version {curve}, folds {folds}"
