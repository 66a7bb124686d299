"""The billing journey of one tenant, through the real pages and a signed webhook: sign up,
move to FL Core, buy credits, run a paid job, see usage, run out cleanly, top up, finish; an
admin refunds; the books balance. (Browser workers earning credits on the leaderboard are in
tests/e2e.)"""

from __future__ import annotations

import pytest
from django.urls import reverse

from billing import ledger, metering
from billing.models import EntryKind, JournalEntry, UsageRecord, UsageStatus
from billing.selectors import leaderboard
from jobs.models import Job, JobStatus
from tenants.models import Tenant, User
from tests.billing.helpers import WEBHOOK_SECRET, deliver, paid_checkout
from tests.billing.test_billing_flow import _work_one_at_a_time
from tests.factories import UserFactory
from tests.jobs.helpers import new_worker

pytestmark = pytest.mark.django_db(transaction=True)


def test_tenant_billing_journey(client, kernels, settings):
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    # sign up and move to FL Core
    client.post(
        reverse("signup"),
        {
            "organisation": "Paid Lab",
            "email": "pi@paid.example.org",
            "password": "a-long-passphrase-9",
        },
    )
    tenant = Tenant.objects.get(name="Paid Lab")
    client.post(reverse("billing_tier"), {"tier": "core"})
    tenant.refresh_from_db()
    assert tenant.tier == "core"
    # a job cannot start with no balance
    form = {
        "name": "paid",
        "kernel": str(kernels["montecarlo_pi"].pk),
        "range_start": 0,
        "range_end": 400_000_000,
        "chunk_size": 100_000_000,
        "quorum": 1,
        "params": "{}",
        "priority": 0,
        "lease_seconds": 60,
        "seed": 9,
    }
    refused = client.post(reverse("job_create"), form)
    assert refused.status_code == 400
    assert "cannot cover the next task" in refused.content.decode()
    # buy credits: checkout, then Stripe's signed webhook credits the balance
    assert deliver(client, paid_checkout(tenant, 2)).status_code == 200
    assert metering.tenant_balance_cents(tenant=tenant) == 2
    # run a paid job: validated work is charged until the balance runs out, then it pauses
    assert client.post(reverse("job_create"), form).status_code == 302
    job = Job.objects.for_tenant(tenant).get()
    session = new_worker()[0]
    assert _work_one_at_a_time(session) == 3
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED
    page = client.get(reverse("billing")).content.decode()
    assert "paid" in page
    assert "unpaid" in page
    result = client.get(f"/api/v1/jobs/{job.pk}/result/").json()
    assert result["unpaid_cents"] == 1
    # top up again; the unpaid task is charged, the job resumes and completes
    deliver(client, paid_checkout(tenant, 500))
    client.post(reverse("job_control", args=[job.pk]), {"action": "resume"})
    _work_one_at_a_time(session)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert UsageRecord.objects.for_tenant(tenant).filter(status=UsageStatus.CHARGED).count() == 4
    assert client.get(f"/api/v1/jobs/{job.pk}/result/").json()["result"]["samples"] == 400_000_000
    assert metering.tenant_balance_cents(tenant=tenant) == 502 - 4
    # the contributor who did the work is on the leaderboard
    assert leaderboard()["all_time"][0]["total"] == 4 * 10
    # an admin refunds part of the last top-up; the books still balance
    admin = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(admin)
    topup = JournalEntry.objects.filter(kind=EntryKind.TOPUP, tenant=tenant).order_by("-id").first()
    client.post(
        reverse("admin:billing_journalentry_refund", args=[topup.pk]),
        {"amount_cents": 400, "reason": "unused"},
    )
    assert metering.tenant_balance_cents(tenant=tenant) == 502 - 4 - 400
    assert ledger.reconcile().ok
    assert User.objects.filter(email="pi@paid.example.org").exists()
