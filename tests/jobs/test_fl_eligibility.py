"""Who may join a cohort protected by secure aggregation or DP (docs/security.md): anonymous
contributors capped per cohort, one worker per contributor, the bound set per job within the
tier's, and refused with its reason by field."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from billing.operations import balance_adjust
from jobs.fl_models import FlConfig, Round
from jobs.models import Job
from jobs.services.fl_rounds import round_open
from jobs.services.fl_rounds_cohort import eligible_workers
from tenants.tiers import Tier
from tests.factories import ContributorFactory, UserFactory, WorkerFactory
from tests.jobs.fl_helpers import fl_job
from tests.jobs.test_fl_rounds import workers

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


DP = {
    "differential_privacy": True,
    "dp_epsilon": 50.0,
    "dp_noise_multiplier": 1.0,
    "dp_clip_norm": 1.0,
}


def _anonymous_of(round_: Round) -> int:
    return sum(
        1 for p in round_.participations.select_related("contributor") if not p.contributor.user_id
    )


def test_a_dp_cohort_takes_no_anonymous_member_it_cannot_dilute(core):
    # Given: a DP job inviting 4, two account holders and five anonymous devices online
    job = fl_job(core, cohort_size=4, min_reports=2, **DP)
    assert job.fl_config.cohort_max_anonymous_fraction == 0.25
    accounted = workers(2, accounted=True)
    workers(5)
    # When: a round opens
    invitations = round_open(job=job)
    # Then: one anonymous member would need a cohort of 4, but 2 + 1 < 4: only the accounts
    round_ = Round.objects.for_tenant(core).get(job=job)
    assert sorted(i.worker_id for i in invitations) == sorted(str(w.pk) for w in accounted)
    assert (round_.cohort_size, round_.anonymous_invited, _anonymous_of(round_)) == (2, 0, 0)


def test_a_secure_aggregation_cohort_holds_at_most_its_share_of_anonymous_members(core):
    # Given: secure aggregation inviting 8 at f = 0.25, six accounts and six anonymous devices
    job = fl_job(core, cohort_size=8, min_reports=4, secure_aggregation=True)
    workers(6, accounted=True)
    workers(6)
    # When: a round opens
    round_open(job=job)
    # Then: 8 invited, ⌊0.25 · 8⌋ = 2 of them anonymous, and the round records it
    round_ = Round.objects.for_tenant(core).get(job=job)
    assert (round_.cohort_size, round_.anonymous_invited, _anonymous_of(round_)) == (8, 2, 2)


def test_an_unprotected_job_invites_anonymous_contributors_freely(core):
    job = fl_job(core, cohort_size=4, min_reports=2)
    workers(4)
    round_open(job=job)
    round_ = Round.objects.for_tenant(core).get(job=job)
    assert (round_.cohort_size, round_.anonymous_invited) == (4, 4)


def test_one_worker_per_contributor_and_the_private_pool_counts_as_accounted(core):
    # Given: an account holder with two online workers and a device of the tenant's own pool
    user = ContributorFactory(user=UserFactory())
    both = [WorkerFactory(contributor=user, capabilities={"simd": True}) for _ in range(2)]
    pooled = WorkerFactory(
        contributor=ContributorFactory(pool_tenant=core), capabilities={"simd": True}
    )
    job = fl_job(core, cohort_size=2, min_reports=2, cohort_max_anonymous_fraction=0.0, **DP)
    Job.objects.unscoped().filter(pk=job.pk).update(private_pool=False)
    # When: the eligible pool is built under f = 0
    eligible = eligible_workers(job=job, config=job.fl_config)
    # Then: one worker of the account holder, and the pool device (registered by the tenant)
    first = min(both, key=lambda w: str(w.pk))  # the stable order: contributor, then id
    assert sorted(str(w.pk) for w in eligible) == sorted([str(first.pk), str(pooled.pk)])


def test_an_inactive_account_is_anonymous(core):
    (worker,) = workers(1, accounted=True)
    worker.contributor.user.is_active = False
    worker.contributor.user.save()
    job = fl_job(core, cohort_size=1, min_reports=1, cohort_max_anonymous_fraction=0.0, **DP)
    assert eligible_workers(job=job, config=job.fl_config) == []


def test_the_bound_is_set_per_job_within_the_tier(core, tenant):
    # FL Core allows up to 0.25: 0.1 is stored, 0.3 is refused by field with the reason
    assert (
        fl_job(
            core, cohort_max_anonymous_fraction=0.1, **DP
        ).fl_config.cohort_max_anonymous_fraction
        == 0.1
    )
    before = FlConfig.objects.for_tenant(core).count()
    with pytest.raises(ValidationError) as refused:
        fl_job(core, cohort_max_anonymous_fraction=0.3, secure_aggregation=True)
    assert "0 to 0.25 on FL Core" in refused.value.message_dict["cohort_max_anonymous_fraction"][0]
    assert FlConfig.objects.for_tenant(core).count() == before
    # An unprotected job stores no bound
    assert fl_job(core).fl_config.cohort_max_anonymous_fraction is None
    # FL Enterprise allows up to 0.5
    tenant.tier = Tier.ENTERPRISE
    tenant.save(update_fields=["tier"])
    job = fl_job(tenant, cohort_max_anonymous_fraction=0.5, **DP)
    assert job.fl_config.cohort_max_anonymous_fraction == 0.5


def test_the_api_and_the_form_carry_the_bound(api_client, core, owner_client):
    created = api_client.post(
        "/api/v1/fl-jobs/",
        {"name": "dp", "model_kernel": "logreg", "model_sizes": [64, 10], "start": False,
         "cohort_max_anonymous_fraction": 0.3, **DP},
        format="json",
    )  # fmt: skip
    assert created.status_code == 400
    assert "cohort_max_anonymous_fraction" in created.json()["error"]["fields"]
    page = owner_client.get("/jobs/new/fl/")
    assert "Anonymous contributors, at most" in page.content.decode()
    job = fl_job(core, cohort_max_anonymous_fraction=0.1, **DP)
    detail = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "at most 10 % of each cohort" in detail
