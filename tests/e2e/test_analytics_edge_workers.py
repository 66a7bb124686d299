"""Federated analytics end to end with real processes: Daphne, Celery (with beat), PostgreSQL,
Redis and three `ccgsc-worker` edge workers. A job over the digits' public partition, then one
over the contributors' own CSV files (their shards of the digits) with differential privacy:
each worker runs the analytics kernel over its rows and uploads the vector; the round sums them
in Celery. The statistics equal numpy's over the union of the shards exactly without DP, and
within the noise's stated bound with it."""

from __future__ import annotations

import numpy as np
import pytest

from billing.models import UsageRecord
from billing.operations import balance_adjust
from jobs.analytics import Column, QuerySpec, block_noise_std, summarize
from jobs.analytics_models import AnalyticsResult
from jobs.federated.data import load_digits
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.services.analytics_creation import AnalyticsJobSpec, analytics_job_create
from jobs.services.fl_data import partition_shards
from tenants.roles import Role
from tenants.tiers import Tier
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import contributors_accounted, workers_online
from tests.servers import EdgeWorkerProcess

pytestmark = [pytest.mark.services, pytest.mark.slow]

FEATURES = (20, 28, 36, 43)
COLUMNS = [{"name": f"px{i}", "feature": i, "lo": 0.0, "hi": 1.0, "bins": 16} for i in FEATURES]
SPEC = QuerySpec(columns=tuple(Column(f"px{i}", i, 0.0, 1.0, 16) for i in FEATURES), max_rows=1000)
# A standard normal draw beyond 6 σ has probability 2e-9: over the vector's 76 coordinates the
# bound fails about once in 7 million runs.
NOISE_BOUND_STDS = 6.0


def _write_csv(path, rows: np.ndarray) -> None:
    header = ",".join(f"px{i}" for i in range(rows.shape[1]))
    lines = [",".join(repr(float(v)) for v in row) for row in rows]
    path.write_text(header + "\n" + "\n".join(lines) + "\n")


def _assert_exact(stats: list[dict], union: np.ndarray) -> None:
    for column, entry in zip(SPEC.columns, stats, strict=True):
        values = union[:, column.feature].astype(np.float64)
        assert entry["count"] == values.size
        assert entry["sum"] == values.sum()
        assert entry["mean"] == values.mean()
        assert entry["variance"] == pytest.approx(values.var(), rel=1e-12)
        expected, _ = np.histogram(values, bins=column.bins, range=(column.lo, column.hi))
        assert entry["histogram"] == expected.tolist()
        assert abs(entry["quantiles"]["0.5"] - np.quantile(values, 0.5)) <= column.width / 16


def test_three_edge_workers_compute_digits_statistics_exactly_then_under_dp(
    fc_stack, tenant, owner, tmp_path
):
    # given a core tenant with credit and three edge workers, each with a CSV of its own rows
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    digits = load_digits().x
    shards = np.array_split(digits[:1500], 3)  # at most max_rows = 1000 rows each
    from jobs import dispatch

    for index, rows in enumerate(shards):
        path = tmp_path / f"contributor-{index}.csv"
        _write_csv(path, rows)
        _, token = dispatch.contributor_create_anonymous()
        worker = EdgeWorkerProcess(fc_stack.daphne.url, token, extra_args=["--data", str(path)])
        worker.start()
        fc_stack.edge_workers.append(worker)
    workers_online(3, fc_stack)
    contributors_accounted()  # a DP cohort admits few anonymous contributors

    def create(**fields):  # noqa: ANN003, ANN202
        spec = AnalyticsJobSpec(
            name="digits", columns=COLUMNS, cohort_size=3, round_deadline_seconds=60, **fields
        )
        return analytics_job_create(tenant=tenant, actor=None, actor_role=Role.OWNER, spec=spec)

    # when an analytics job over the public partition (3 IID clients) runs
    public = create(partition="iid", partition_clients=3, seed=11)
    public = wait_for_job(public.pk, timeout_s=120, stack=fc_stack)
    # then its one round folded three vectors and its statistics are numpy's over the union of
    # the invitees' shards, exactly
    round_ = Round.objects.for_tenant(tenant).get(job=public)
    assert (round_.status, round_.reports) == (RoundStatus.CLOSED, 3)
    indices = sorted(
        p.invite["data"]["client_index"]
        for p in Participation.objects.for_tenant(tenant).filter(round=round_)
    )
    assert indices == [0, 1, 2]
    parts = partition_shards(
        dataset="digits", partition="iid", clients=3, seed=public.seed, alpha=None, per_client=2
    )
    union = np.concatenate([x for x, _, _ in parts])
    result = AnalyticsResult.objects.for_tenant(tenant).get(round=round_)
    assert (result.contributors, result.rows) == (3, len(union))
    _assert_exact(result.statistics, union)
    assert UsageRecord.objects.for_tenant(tenant).filter(job=public).count() == 1

    # when a job over the contributors' own files runs with differential privacy (ε = 5)
    private = create(data_source="contributor_local", differential_privacy=True, dp_epsilon=5.0)
    private = wait_for_job(private.pk, timeout_s=120, stack=fc_stack)
    # then the released sum is within the stated noise of the exact sum of the three files
    round_ = Round.objects.for_tenant(tenant).get(job=private)
    result = AnalyticsResult.objects.for_tenant(tenant).get(round=round_)
    assert (result.contributors, result.rows, result.differentially_private) == (3, 1500, True)
    exact = summarize(np.concatenate(shards), SPEC).astype(np.float64)
    std = block_noise_std(SPEC, noise_multiplier=private.fl_config.dp_noise_multiplier)
    noisy = np.array(result.aggregate)
    assert np.all(np.abs(noisy - exact) <= NOISE_BOUND_STDS * std)
    assert not np.array_equal(noisy, exact)
    assert 0 < round_.epsilon_spent <= 5.0
    print(  # noqa: T201 - the measured round durations, for docs/analytics.md
        "analytics rounds:",
        Round.objects.for_tenant(tenant).filter(job=public).get().metrics["duration_seconds"],
        round_.metrics["duration_seconds"],
    )
