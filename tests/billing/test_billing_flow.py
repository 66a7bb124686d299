"""Metering, charging, balance gating, webhooks, credits, payouts and admin operations."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from billing import credits, ledger, metering, payouts, topups
from billing.models import (
    AccountKind,
    EntryKind,
    JournalEntry,
    Payout,
    PayoutStatus,
    StripeEvent,
    UsageRecord,
    UsageStatus,
)
from billing.selectors import leaderboard
from jobs import dispatch
from jobs import services as job_services
from jobs.models import Contributor, JobStatus
from tenants.models import AuditEvent, Tenant
from tenants.roles import Role
from tenants.tiers import Tier
from tests.billing.helpers import (
    WEBHOOK_SECRET,
    checkout_completed,
    deliver,
    event,
    paid_checkout,
)
from tests.factories import UserFactory
from tests.jobs.helpers import fc_job, new_worker, submit, work_until_done

pytestmark = pytest.mark.django_db

# 10^9 work units cost 10 cents on FL Core; a task of 10^8 costs 1 cent.
TASK = 100_000_000


@pytest.fixture
def core_tenant(tenant):
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.CORE)
    tenant.refresh_from_db()
    return tenant


@pytest.fixture
def webhook_settings(settings):
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return settings


def _paid_job(tenant, owner, kernels, tasks: int = 4, **extra):  # noqa: ANN001, ANN202
    return fc_job(
        tenant,
        owner,
        kernels["montecarlo_pi"],
        tasks=tasks,
        range_start=0,
        chunk_size=TASK,
        quorum=1,
        seed=1,
        **extra,
    )


def _topup(tenant, cents):  # noqa: ANN001, ANN202
    return topups.topup_fulfil(
        session_id=f"cs_{tenant.pk}_{cents}_{JournalEntry.objects.count()}",
        tenant_id=str(tenant.pk),
        amount_cents=cents,
    )


def test_prepaid_job_refuses_to_start_without_balance(core_tenant, owner, kernels):
    with pytest.raises(ValidationError, match="cannot cover the next task"):
        _paid_job(core_tenant, owner, kernels)
    assert not core_tenant.jobs.exists()


def test_webhook_topup_credits_once_whatever_the_delivery(client, core_tenant, webhook_settings):
    payload = paid_checkout(core_tenant, 2500)
    # delivered once, then twice more (Stripe retries)
    statuses = [deliver(client, payload).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert metering.tenant_balance_cents(tenant=core_tenant) == 2500
    assert StripeEvent.objects.count() == 1
    assert JournalEntry.objects.filter(kind=EntryKind.TOPUP).count() == 1
    # the same session in a different event (a replay with a new id) still credits once
    replay = {**payload, "id": "evt_replayed_with_new_id"}
    assert deliver(client, replay).json()["outcome"] == "duplicate"
    assert metering.tenant_balance_cents(tenant=core_tenant) == 2500
    assert ledger.reconcile().ok


def test_webhooks_out_of_order_and_unknown_and_forged(client, core_tenant, webhook_settings):
    first = paid_checkout(core_tenant, 1000)
    second = paid_checkout(core_tenant, 700)
    unknown = event("customer.updated", {"id": "cus_1"})
    for payload in (second, unknown, first, second):
        assert deliver(client, payload).status_code == 200
    assert metering.tenant_balance_cents(tenant=core_tenant) == 1700
    forged = deliver(
        client,
        checkout_completed(tenant_id=str(core_tenant.pk), amount_cents=10**6),
        signature="t=1,v1=deadbeef",
    )
    assert forged.status_code == 400
    assert forged.json()["error"]["code"] == "bad_signature"
    wrong_secret = deliver(
        client,
        checkout_completed(tenant_id=str(core_tenant.pk), amount_cents=10**6),
        secret="whsec_other",
    )
    assert wrong_secret.status_code == 400
    assert metering.tenant_balance_cents(tenant=core_tenant) == 1700


def _work_one_at_a_time(session, limit: int = 100) -> int:  # noqa: ANN001
    done = 0
    for _ in range(limit):
        offers = dispatch.assignment_claim(worker_id=session.worker_id, count=1)
        if not offers:
            return done
        submit(session, offers[0])
        done += 1
    return done


@pytest.mark.django_db(transaction=True)
def test_paid_fc_work_is_charged_then_the_job_pauses_cleanly_when_money_runs_out(
    core_tenant, owner, kernels, client
):
    # given 2 cents: enough for two tasks of 1 cent; commits are real, so charges run as tasks validate
    _topup(core_tenant, 2)
    job = _paid_job(core_tenant, owner, kernels, tasks=4)
    session = new_worker()[0]
    # when a worker validates tasks one by one
    assert _work_one_at_a_time(session) == 3
    # then two tasks were charged, the third could not be, and the job paused with a reason
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED
    assert "Balance exhausted" in job.status_reason
    usage = UsageRecord.objects.for_tenant(core_tenant)
    assert usage.filter(status=UsageStatus.CHARGED).count() == 2
    assert usage.filter(status=UsageStatus.UNPAID).count() == 1
    assert metering.tenant_balance_cents(tenant=core_tenant) == 0
    with pytest.raises(ValidationError, match="cannot cover"):
        job_services.job_resume(job=job, actor_role=Role.OWNER)
    # when the tenant tops up, the unpaid usage is charged and the job resumes and finishes
    _topup(core_tenant, 100)
    assert usage.filter(status=UsageStatus.UNPAID).count() == 0
    job_services.job_resume(job=job, actor_role=Role.OWNER)
    assert _work_one_at_a_time(session) == 1
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert usage.filter(status=UsageStatus.CHARGED).count() == 4
    assert metering.tenant_balance_cents(tenant=core_tenant) == 102 - 4
    assert ledger.reconcile().ok


def test_a_retried_charge_charges_once(
    core_tenant, owner, kernels, django_capture_on_commit_callbacks
):
    _topup(core_tenant, 100)
    job = _paid_job(core_tenant, owner, kernels, tasks=1)
    session = new_worker()[0]
    (offer,) = dispatch.assignment_claim(worker_id=session.worker_id, count=1)
    with django_capture_on_commit_callbacks(execute=True):
        submit(session, offer)
    usage = UsageRecord.objects.for_tenant(core_tenant).get(job=job)
    # Celery redelivers the same task id three more times
    from billing.tasks import usage_charge

    outcomes = [usage_charge.apply(args=[usage.pk]).get() for _ in range(3)]
    assert outcomes == ["charged"] * 3
    assert (
        JournalEntry.objects.filter(
            kind=EntryKind.CHARGE, idempotency_key=f"charge:usage:{usage.pk}"
        ).count()
        == 1
    )
    assert metering.tenant_balance_cents(tenant=core_tenant) == 99


def test_contributors_earn_credits_and_a_share_once_and_appear_on_the_leaderboard(
    core_tenant, owner, kernels, django_capture_on_commit_callbacks
):
    _topup(core_tenant, 1000)
    job = fc_job(
        core_tenant,
        owner,
        kernels["montecarlo_pi"],
        tasks=2,
        range_start=0,
        chunk_size=TASK,
        quorum=2,
    )
    workers = [new_worker()[0], new_worker()[0]]
    with django_capture_on_commit_callbacks(execute=True):
        work_until_done(workers)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    for session in workers:
        contributor = Contributor.objects.get(pk=session.contributor_id)
        account = ledger.account_get(AccountKind.CONTRIBUTOR_CREDITS, contributor=contributor)
        assert account.balance_cents == 2 * 100 // 10  # 2 tasks × credits_for(10^8) = 10 each
        assert (
            payouts.contributor_earnings_cents(contributor=contributor) == 0
        )  # half of 1 cent rounds to 0
    # replays of the credit award change nothing
    assert credits.credits_award_task(task_id=job.tasks.first().pk) == 0
    board = leaderboard()
    assert len(board["all_time"]) == 2
    assert board["all_time"][0]["total"] == 20
    assert board["recent"][0]["recent"] > 19.9
    assert ledger.reconcile().ok


def test_revoking_a_cheaters_credits_reverses_them(
    core_tenant, owner, kernels, admin_user, django_capture_on_commit_callbacks
):
    job_services.job_create(
        tenant=Tenant.objects.create(name="free", slug="free"),
        actor=owner,
        actor_role=Role.OWNER,
        spec=job_services.JobSpec(
            name="free",
            kernel=kernels["montecarlo_pi"],
            range_start=0,
            range_end=TASK,
            chunk_size=TASK,
            params={},
            quorum=1,
            seed=5,
        ),
    )
    session = new_worker()[0]
    with django_capture_on_commit_callbacks(execute=True):
        work_until_done([session])
    contributor = Contributor.objects.get(pk=session.contributor_id)
    account = ledger.account_get(AccountKind.CONTRIBUTOR_CREDITS, contributor=contributor)
    assert account.balance_cents == 10
    assert (
        credits.credits_revoke_contributor(
            contributor=contributor, actor=admin_user, reason="failed known answers"
        )
        == 1
    )
    account.refresh_from_db()
    assert account.balance_cents == 0
    assert AuditEvent.objects.filter(action="contributor.credits_revoked").exists()


def test_payout_request_approve_and_books(admin_user):
    contributor, _ = dispatch.contributor_create_anonymous()
    earnings = ledger.account_get(AccountKind.CONTRIBUTOR_EARNINGS, contributor=contributor)
    revenue = ledger.account_get(AccountKind.PLATFORM_REVENUE)
    ledger.entry_post(
        key="seed-earnings",
        kind=EntryKind.CHARGE,
        lines=[ledger.Line(earnings, 1500), ledger.Line(revenue, -1500)],
    )
    payout = payouts.payout_request(contributor=contributor)
    with pytest.raises(ValidationError, match="already"):
        payouts.payout_request(contributor=contributor)
    held = payouts.payout_decide(
        payout=payout, approve=False, actor=admin_user, note="check identity"
    )
    assert held.status == PayoutStatus.HELD
    approved = payouts.payout_decide(payout=payout, approve=True, actor=admin_user)
    assert approved.status == PayoutStatus.APPROVED
    with pytest.raises(ValidationError):
        payouts.payout_decide(payout=payout, approve=True, actor=admin_user)
    assert payouts.contributor_earnings_cents(contributor=contributor) == 0
    assert Payout.objects.get().entry.kind == EntryKind.PAYOUT
    assert ledger.reconcile().ok


def test_small_earnings_cannot_be_paid_out():
    contributor, _ = dispatch.contributor_create_anonymous()
    with pytest.raises(ValidationError, match="Payouts start at"):
        payouts.payout_request(contributor=contributor)


def test_admin_refund_adjustment_and_promotion_post_entries_and_balance(
    client, core_tenant, admin_user
):
    topup = _topup(core_tenant, 5000)
    client.force_login(admin_user)
    url = reverse("admin:billing_journalentry_refund", args=[topup.pk])
    assert client.post(url, {"amount_cents": 2000, "reason": "customer request"}).status_code == 302
    assert (
        client.post(url, {"amount_cents": 4000, "reason": "too much"}).status_code == 200
    )  # refused: only 3000 left
    adjust = reverse("admin:billing_adjust_balance", args=[core_tenant.pk])
    assert (
        client.post(
            adjust, {"amount_cents": 300, "reason": "goodwill", "promotional": "on"}
        ).status_code
        == 302
    )
    assert client.post(adjust, {"amount_cents": -100, "reason": "correction"}).status_code == 302
    assert metering.tenant_balance_cents(tenant=core_tenant) == 5000 - 2000 + 300 - 100
    actions = set(AuditEvent.objects.filter(tenant=core_tenant).values_list("action", flat=True))
    assert {"billing.refund", "billing.promotion", "billing.adjustment"} <= actions
    report = ledger.reconcile()
    assert report.ok
    # the ledger cannot be edited from admin
    change = client.post(
        reverse("admin:billing_journalentry_change", args=[topup.pk]), {"memo": "edited"}
    )
    assert change.status_code == 403


def test_billing_and_pricing_pages(owner_client, core_tenant):
    _topup(core_tenant, 1234)
    page = owner_client.get(reverse("billing")).content.decode()
    assert "$12.34" in page
    assert "TEST MODE" in page
    pricing = owner_client.get(reverse("pricing")).content.decode()
    assert "FL Core" in pricing
    assert "per completed round" in pricing
    assert owner_client.get(reverse("leaderboard")).status_code == 200


def test_test_mode_checkout_credits_the_balance(owner_client, core_tenant):
    response = owner_client.post(reverse("billing_checkout"), {"amount": "25"})
    assert response.status_code == 302
    assert "/billing/test-checkout/" in response.url
    page = owner_client.get(response.url)
    assert "TEST MODE" in page.content.decode()
    owner_client.post(response.url.split("?")[0], {"amount": "2500"})
    owner_client.post(response.url.split("?")[0], {"amount": "2500"})  # double submit
    assert metering.tenant_balance_cents(tenant=core_tenant) == 2500


def test_members_cannot_buy_credits(client, core_tenant):
    from tests.factories import PASSWORD, MembershipFactory

    member = MembershipFactory(tenant=core_tenant, role=Role.MEMBER).user
    client.login(email=member.email, password=PASSWORD)
    response = client.post(reverse("billing_checkout"), {"amount": "25"}, follow=True)
    assert "may not manage billing" in response.content.decode()


@pytest.fixture
def admin_user(db):
    return UserFactory(is_staff=True, is_superuser=True)


def test_contributor_requests_a_payout_from_the_profile_page(client, owner):
    contributor = dispatch.contributor_for_user(user=owner)
    earnings = ledger.account_get(AccountKind.CONTRIBUTOR_EARNINGS, contributor=contributor)
    revenue = ledger.account_get(AccountKind.PLATFORM_REVENUE)
    ledger.entry_post(
        key="seed",
        kind=EntryKind.CHARGE,
        lines=[ledger.Line(earnings, 2500), ledger.Line(revenue, -2500)],
    )
    client.force_login(owner)
    page = client.get(reverse("contributor_profile")).content.decode()
    assert "$25.00" in page
    client.post(reverse("payout_request"))
    assert Payout.objects.get().amount_cents == 2500
