"""Secure analytics rounds through the services, on real PostgreSQL: edge-worker wire clients
answer the four phases for an analytics job, mask their summary vectors at the query's encoding
(a power-of-two scale over the vector's bound), upload them through the chunked upload API, and
the round closes (eager Celery) with the exact sum of the survivors' vectors as its result; the
encoding is refused at creation when a query's entries cannot be summed."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from django.core.exceptions import ValidationError

from billing.models import UsageRecord
from billing.operations import balance_adjust
from ccgsc_worker.secagg.wire import WireClient, masked_body
from jobs import dispatch, realtime
from jobs.analytics import Column, QuerySpec, block_noise_std, derive_statistics, summarize
from jobs.analytics.secure import secure_encoding
from jobs.analytics_models import AnalyticsResult
from jobs.federated.data import load_digits
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.secagg_models import SecAggPhase, SecAggRound
from jobs.services.analytics_creation import AnalyticsJobSpec, analytics_job_create
from jobs.services.fl_rounds import round_open
from tenants.roles import Role
from tenants.tiers import Tier
from tests.factories import ContributorFactory, UserFactory, WorkerFactory
from tests.jobs.test_fl_secagg import SecureCohort, _upload

pytestmark = [pytest.mark.django_db(transaction=True)]

COLUMNS = [
    {"name": "px20", "feature": 20, "lo": 0.0, "hi": 1.0, "bins": 16},
    {"name": "px36", "feature": 36, "lo": -0.5, "hi": 1.5, "bins": 4},
]
SPEC = QuerySpec(
    columns=(Column("px20", 20, 0.0, 1.0, 16), Column("px36", 36, -0.5, 1.5, 4)), max_rows=300
)


@pytest.fixture
def core_tenant(tenant, owner):  # noqa: ANN001, ANN201
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return tenant


class SecureAnalyticsCohort(SecureCohort):
    """A secure analytics round opened for n edge workers, each summarising its own rows."""

    def __init__(self, tenant, *, n: int = 5, rows: list[np.ndarray], **fields) -> None:  # noqa: ANN001, ANN003
        spec = AnalyticsJobSpec(
            name="secure stats",
            columns=COLUMNS,
            max_rows=SPEC.max_rows,
            data_source="contributor_local",
            cohort_size=n,
            min_reports=3,
            secure_aggregation=True,
            **fields,
        )
        # started before any worker is online: its first round opens below
        self.job = analytics_job_create(tenant=tenant, actor=None, actor_role=Role.OWNER, spec=spec)
        self.workers = [
            WorkerFactory(
                contributor=ContributorFactory(user=UserFactory()), capabilities={"simd": True}
            )
            for _ in range(n)
        ]
        self.tokens = {
            w.pk: dispatch.worker_token_issue(contributor=w.contributor) for w in self.workers
        }
        with realtime.sends_collected() as sent:
            round_open(job=self.job)
        self.round = Round.objects.for_tenant(tenant).get(job=self.job)
        self.secagg = SecAggRound.objects.for_tenant(tenant).get(round=self.round)
        self.invites = {
            m["participation"]: m for _, m in sent if m["type"] == "worker.round_invite"
        }
        self.participations = {p.pk: p for p in self.round.participations.all()}
        self.clients = {
            pid: WireClient(
                job=inv["job"],
                round_number=inv["round"],
                participation=pid,
                block=inv["secagg"],
                dimension=inv["analytics"]["dimension"],
            )
            for pid, inv in self.invites.items()
        }
        self.rows = dict(zip(sorted(self.clients), rows, strict=True))
        self.updates = {pid: summarize(x, SPEC) for pid, x in self.rows.items()}
        self.inbox = {pid: [] for pid in self.clients}

    def upload(self, pids) -> None:  # noqa: ANN001
        for pid in pids:
            client = self.clients[pid]
            client.on_ciphertexts(self.last(pid, "secagg_ciphertexts"))
            used = min(len(self.rows[pid]), SPEC.max_rows)
            header = struct.pack("<IIdIId", 0, used, 0.0, 0, SPEC.dimension, 0.0)
            body = masked_body(header, client.mask_update(self.updates[pid]))
            with realtime.sends_collected() as sent:
                _upload(self.tokens[self.participations[pid].worker_id], pid, body)
            self._deliver(sent)


def test_a_secure_analytics_round_releases_the_exact_sum_of_the_survivors_vectors(core_tenant):
    # given five contributors with digits rows (multiples of 1/16: exact at the round's scale)
    shards = np.array_split(load_digits().x[:1400], 5)
    cohort = SecureAnalyticsCohort(core_tenant, rows=shards)
    everyone = sorted(cohort.clients)
    # then the invites carry the query's encoding, not an update's clip bound
    bound, scale = secure_encoding(SPEC, n_clients=5)
    assert (cohort.secagg.bound, cohort.secagg.scale) == (bound, scale)
    assert {(i["secagg"]["bound"], i["secagg"]["scale"]) for i in cohort.invites.values()} == {
        (bound, scale)
    }
    assert bound > SPEC.max_rows * 2.0**2
    assert scale == 2.0**18
    # when all advertise and share keys, one never sends its vector, and the rest unmask
    cohort.advertise(everyone)
    cohort.share(everyone)
    cohort.upload(everyone[1:])
    cohort.expire(SecAggPhase.MASKED_INPUT)
    cohort.reveal(everyone[1:])
    # then the round closed with the four survivors' vectors summed exactly, and their rows
    cohort.round.refresh_from_db()
    assert (cohort.round.status, cohort.round.reports) == (RoundStatus.CLOSED, 4)
    result = AnalyticsResult.objects.for_tenant(core_tenant).get(round=cohort.round)
    expected = sum(cohort.updates[pid].astype(np.float64) for pid in everyone[1:])
    assert result.aggregate == expected.tolist()
    union = np.concatenate([cohort.rows[pid] for pid in everyone[1:]])
    assert (result.contributors, result.rows) == (4, len(union))
    assert result.statistics == [s.as_dict() for s in derive_statistics(expected, SPEC)]
    assert result.statistics[0]["count"] == len(union)
    included = Participation.objects.for_tenant(core_tenant).filter(round=cohort.round)
    assert sorted(included.filter(included=True).values_list("pk", flat=True)) == everyone[1:]
    assert UsageRecord.objects.for_tenant(core_tenant).filter(job=cohort.job).count() == 1


def test_values_the_scale_cannot_hold_decode_within_one_unit_per_contributor(core_tenant):
    # given rows with values of many binary digits
    rng = np.random.default_rng(5)
    rows = [rng.random((200, 64)).astype(np.float32) for _ in range(5)]
    cohort = SecureAnalyticsCohort(core_tenant, rows=rows)
    everyone = sorted(cohort.clients)
    # when every client goes through the four phases
    cohort.advertise(everyone)
    cohort.share(everyone)
    cohort.upload(everyone)
    cohort.reveal(everyone)
    # then counts and histograms are exact and every sum is within 5 / scale of the plain sum
    result = AnalyticsResult.objects.for_tenant(core_tenant).get(round=cohort.round)
    expected = sum(cohort.updates[pid].astype(np.float64) for pid in everyone)
    error = np.abs(np.array(result.aggregate) - expected)
    assert error.max() < 5 / cohort.secagg.scale
    for column, offset in zip(SPEC.columns, SPEC.offsets(), strict=True):
        counts = [offset, *range(offset + 3, offset + column.length)]
        assert np.array_equal(np.array(result.aggregate)[counts], expected[counts])


def test_under_dp_the_server_noises_the_unmasked_sum_within_its_stated_spread(core_tenant):
    # given a secure analytics job with differential privacy (ε = 5, one round)
    shards = np.array_split(load_digits().x[:1400], 5)
    cohort = SecureAnalyticsCohort(
        core_tenant, rows=shards, differential_privacy=True, dp_epsilon=5.0
    )
    everyone = sorted(cohort.clients)
    # then the encoding is still the query's (not DP's clip norm of 1 in scaled units)
    assert cohort.secagg.bound == secure_encoding(SPEC, n_clients=5)[0]
    # when every client goes through the four phases
    cohort.advertise(everyone)
    cohort.share(everyone)
    cohort.upload(everyone)
    cohort.reveal(everyone)
    # then the released sum is the exact sum plus noise within 6 σ of each entry, and ε is spent
    cohort.round.refresh_from_db()
    result = AnalyticsResult.objects.for_tenant(core_tenant).get(round=cohort.round)
    exact = sum(cohort.updates[pid].astype(np.float64) for pid in everyone)
    std = block_noise_std(SPEC, noise_multiplier=cohort.job.fl_config.dp_noise_multiplier)
    noisy = np.array(result.aggregate)
    assert np.all(np.abs(noisy - exact) <= 6 * std)
    assert not np.array_equal(noisy, exact)
    assert result.differentially_private
    assert 0 < cohort.round.epsilon_spent <= 5.0


def test_a_query_too_large_to_sum_securely_is_refused_at_creation(core_tenant):
    # given a query whose sums of squares reach 2^24 rows × 10^12 per contributor
    spec = AnalyticsJobSpec(
        name="too wide",
        columns=[{"name": "x", "feature": 0, "lo": 0.0, "hi": 1e6, "bins": 4}],
        max_rows=1 << 24,
        cohort_size=10,
        secure_aggregation=True,
    )
    # when it is created, then it is refused with the reason, and nothing is written
    with pytest.raises(ValidationError) as refused:
        analytics_job_create(tenant=core_tenant, actor=None, actor_role=Role.OWNER, spec=spec)
    assert "too large for secure aggregation" in refused.value.message_dict["secure_aggregation"][0]
    assert not Round.objects.for_tenant(core_tenant).exists()
