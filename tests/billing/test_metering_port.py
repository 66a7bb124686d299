"""Billing behind the jobs port: registered at start, usage linked to what it meters, FL rounds."""

from __future__ import annotations

import pytest

from billing import ledger
from billing.metering import BillingMetering
from billing.models import AccountKind, EntryKind, JournalEntry, UsageKind, UsageRecord, UsageStatus
from billing.topups import topup_fulfil
from jobs.metering import WorkQuote, WorkRefused, metering
from jobs.models import Contributor, JobStatus
from tenants.models import Tenant
from tenants.tiers import Tier
from tests.jobs.helpers import fc_job, new_worker, work_until_done

pytestmark = pytest.mark.django_db

TASK = 100_000_000  # 1 cent of FC work on FL Core


def _metered_job(tenant, owner, kernels, *, quorum: int):  # noqa: ANN001, ANN202
    """Two montecarlo tasks of ``TASK`` samples each, started: 1 cent of work per task."""
    return fc_job(
        tenant,
        owner,
        kernels["montecarlo_pi"],
        tasks=2,
        quorum=quorum,
        range_start=0,
        chunk_size=TASK,
        seed=3,
    )


@pytest.fixture
def core_tenant(tenant):
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.CORE)
    tenant.refresh_from_db()
    return tenant


def test_billing_registers_itself_behind_the_port():
    assert isinstance(metering(), BillingMetering)


def test_admit_refuses_what_a_prepaid_balance_cannot_cover(core_tenant):
    with pytest.raises(WorkRefused, match=r"cannot cover the next task \(\$0.01\)"):
        metering().admit(tenant=core_tenant, quote=WorkQuote(work_units=TASK))
    with pytest.raises(WorkRefused, match=r"next round \(\$0.50\)"):
        metering().admit(tenant=core_tenant, quote=WorkQuote(rounds=1))
    topup_fulfil(session_id="cs_port", tenant_id=str(core_tenant.pk), amount_cents=100)
    metering().admit(tenant=core_tenant, quote=WorkQuote(rounds=1, bytes_transferred=10**9))


def test_validated_tasks_are_metered_with_a_foreign_key_and_earnings_follow_it(
    core_tenant, owner, kernels, django_capture_on_commit_callbacks
):
    topup_fulfil(session_id="cs_fk", tenant_id=str(core_tenant.pk), amount_cents=1000)
    Tenant.objects.filter(pk=core_tenant.pk).update(tier=Tier.CORE)
    job = _metered_job(core_tenant, owner, kernels, quorum=2)
    # 10 cents per task, so the contributors' half-share (5 cents) splits between two replicas
    job.tasks.update(work_units=10 * TASK)
    workers = [new_worker()[0], new_worker()[0]]
    with django_capture_on_commit_callbacks(execute=True):
        work_until_done(workers)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    usage = list(UsageRecord.objects.for_tenant(core_tenant).order_by("task__index"))
    assert [u.task_id for u in usage] == list(
        job.tasks.order_by("index").values_list("pk", flat=True)
    )
    assert {u.status for u in usage} == {UsageStatus.CHARGED}
    for session in workers:
        contributor = Contributor.objects.get(pk=session.contributor_id)
        earnings = ledger.account_get(AccountKind.CONTRIBUTOR_EARNINGS, contributor=contributor)
        assert earnings.balance_cents == 2 * 2  # 5 // 2 per task, two tasks
    shares = JournalEntry.objects.filter(kind=EntryKind.CONTRIBUTOR_SHARE)
    assert shares.count() == 2
    assert not shares.filter(tenant__isnull=False).exists()
    assert metering().withheld_cents(job=job) == 0
    assert ledger.reconcile().ok


def test_an_fl_round_is_charged_once_and_credits_the_listed_contributors(
    core_tenant, owner, kernels, django_capture_on_commit_callbacks
):
    topup_fulfil(session_id="cs_round", tenant_id=str(core_tenant.pk), amount_cents=1000)
    job = _metered_job(core_tenant, owner, kernels, quorum=1)
    included, left_out = new_worker()[0], new_worker()[0]
    for _ in range(2):  # a replayed round close meters nothing new
        with django_capture_on_commit_callbacks(execute=True):
            metering().round_completed(
                job=job,
                round_number=1,
                bytes_transferred=2 * 10**9,
                contributor_ids=[included.contributor_id],
            )
    (usage,) = UsageRecord.objects.for_tenant(core_tenant).filter(kind=UsageKind.FL_ROUND)
    assert (usage.round_number, usage.amount_cents, usage.status) == (1, 50 + 10, "charged")
    assert ledger.account_get(AccountKind.TENANT_BALANCE, tenant=core_tenant).balance_cents == 940
    credits = {
        contributor: ledger.account_get(
            AccountKind.CONTRIBUTOR_CREDITS,
            contributor=Contributor.objects.get(pk=session.contributor_id),
        ).balance_cents
        for contributor, session in (("included", included), ("left_out", left_out))
    }
    assert credits == {"included": 10, "left_out": 0}
    assert ledger.reconcile().ok
