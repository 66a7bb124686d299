"""Issue 11, item 1: a charge is never lost, on real PostgreSQL and with a real Celery worker.

The deadlock the outside tester hit: the charge task locked the usage row *and the tenant row*
(``select_for_update`` without ``of``), found the balance exhausted and paused the job in the
same transaction (the job's row lock); meanwhile the worker consumer, validating several
results in one transaction, had updated the job row and then inserted the next usage row, whose
foreign key needs a share lock on the tenant row. Each waited for the other.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from billing import ledger, metering, tasks
from billing.metering import tenant_balance_cents, usage_emit
from billing.models import UsageKind, UsageRecord, UsageStatus
from billing.topups import topup_fulfil
from jobs.metering import metering as registered_metering
from jobs.models import Job, JobStatus
from tenants.models import Tenant
from tenants.tiers import Tier
from tests.jobs.helpers import fc_job

TASK = 100_000_000


@pytest.fixture
def core_tenant(tenant):
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.CORE)
    tenant.refresh_from_db()
    return tenant


def _running_job(tenant, owner, kernels) -> Job:  # noqa: ANN001
    topup_fulfil(session_id="cs_seed", tenant_id=str(tenant.pk), amount_cents=1)
    job = fc_job(
        tenant,
        owner,
        kernels["montecarlo_pi"],
        tasks=4,
        range_start=0,
        chunk_size=TASK,
        quorum=1,
        seed=1,
    )
    # spend the balance so that the next charge finds it exhausted
    spent = usage_emit(
        tenant=tenant, kind=UsageKind.FC_WORK_UNITS, quantity=TASK, key="fc:spent", amount_cents=1
    )
    metering.usage_charge(usage_id=spent.pk)
    assert tenant_balance_cents(tenant=tenant) == 0
    return job


def _backend_waits_on_a_lock(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return bool(row) and row[0] == "Lock"


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_charging_while_the_consumer_validates_neither_deadlocks_nor_loses_a_charge(
    core_tenant, owner, kernels
):
    # given a running job whose tenant's balance is exhausted, and a usage row to charge
    job = _running_job(core_tenant, owner, kernels)
    usage = UsageRecord.objects.unscoped().create(
        tenant=core_tenant,
        job=job,
        kind=UsageKind.FC_WORK_UNITS,
        quantity=TASK,
        amount_cents=1,
        idempotency_key="fc:to-charge",
    )
    job_locked = threading.Event()
    charge_pid: list[int] = []
    charge_done = threading.Event()
    errors: list[BaseException] = []
    outcome: list[str] = []

    def consumer() -> None:
        """Validates two results in one transaction, as the dispatch plane's group commit does."""
        try:
            with transaction.atomic():
                Job.objects.unscoped().filter(pk=job.pk).update(
                    tasks_validated=F("tasks_validated") + 1
                )
                job_locked.set()
                for _ in range(400):  # until the charge is blocked on a lock, or done
                    if charge_done.is_set() or (
                        charge_pid and _backend_waits_on_a_lock(charge_pid[0])
                    ):
                        break
                    time.sleep(0.01)
                usage_emit(
                    tenant=core_tenant,
                    kind=UsageKind.FC_WORK_UNITS,
                    quantity=TASK,
                    key="fc:validated-meanwhile",
                    job=job,
                    amount_cents=1,
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    def charge() -> None:
        """The Celery charge task, as the worker runs it."""
        try:
            job_locked.wait()
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                charge_pid.append(cursor.fetchone()[0])
            result = tasks.usage_charge.apply(args=[usage.pk])
            outcome.append(result.state)
            outcome.append(result.result)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            charge_done.set()
            connection.close()

    threads = [threading.Thread(target=consumer), threading.Thread(target=charge)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then neither side failed, the charge waits as unpaid, and the job paused after commit
    assert errors == []
    assert outcome == ["SUCCESS", UsageStatus.UNPAID]
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED
    statuses = dict(
        UsageRecord.objects.for_tenant(core_tenant).values_list("idempotency_key", "status")
    )
    assert statuses == {
        "fc:spent": UsageStatus.CHARGED,
        "fc:to-charge": UsageStatus.UNPAID,
        "fc:validated-meanwhile": UsageStatus.UNPAID,
    }
    assert registered_metering().withheld_cents(job=job) == 2
    # and a top-up charges everything that waited: nothing was lost
    topup_fulfil(session_id="cs_more", tenant_id=str(core_tenant.pk), amount_cents=500)
    assert set(UsageRecord.objects.for_tenant(core_tenant).values_list("status", flat=True)) == {
        UsageStatus.CHARGED
    }
    assert tenant_balance_cents(tenant=core_tenant) == 498
    assert registered_metering().withheld_cents(job=job) == 0
    assert ledger.reconcile().ok


@pytest.mark.django_db
def test_the_charge_and_credit_tasks_retry_database_errors(core_tenant, monkeypatch):
    topup_fulfil(session_id="cs_retry", tenant_id=str(core_tenant.pk), amount_cents=500)
    usage = usage_emit(
        tenant=core_tenant, kind=UsageKind.FL_ROUND, quantity=1, key="fl:retry", amount_cents=50
    )
    # the on-commit charge never ran (this test's transaction never commits): a lost task
    assert usage.status == UsageStatus.PENDING
    real = metering.usage_charge
    failures = iter([OperationalError("deadlock detected"), OperationalError("server closed")])

    def flaky(*, usage_id: int) -> metering.ChargeOutcome:
        for failure in failures:
            raise failure
        return real(usage_id=usage_id)

    monkeypatch.setattr(metering, "usage_charge", flaky)
    # each failed run is retried (eagerly here; a real worker re-queues it) instead of failing
    # (the suite's fixture restores eager propagation after the test)
    tasks.usage_charge.app.conf.task_eager_propagates = False
    result = tasks.usage_charge.apply(args=[usage.pk])
    assert (result.state, result.result) == ("SUCCESS", UsageStatus.CHARGED)
    assert next(failures, None) is None  # both failures happened, then the retry charged
    assert tasks.usage_charge.autoretry_for == tasks.DATABASE_RETRY
    assert tasks.credits_award_task.autoretry_for == tasks.DATABASE_RETRY
    assert OperationalError in tasks.DATABASE_RETRY


@pytest.mark.django_db
def test_pending_usage_is_withheld_until_charged(core_tenant, owner, kernels):
    job = _running_job(core_tenant, owner, kernels)
    usage_emit(
        tenant=core_tenant,
        kind=UsageKind.FC_WORK_UNITS,
        quantity=TASK,
        key="fc:pending",
        job=job,
        amount_cents=1,
    )
    assert registered_metering().withheld_cents(job=job) == 1


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_beat_sweep_on_a_real_worker_charges_usage_a_lost_task_left_pending(
    core_tenant, celery_worker
):
    # given usage whose charge task was lost (written without one), recorded minutes ago
    topup_fulfil(session_id="cs_sweep", tenant_id=str(core_tenant.pk), amount_cents=500)
    lost = UsageRecord.objects.unscoped().create(
        tenant=core_tenant,
        kind=UsageKind.FL_ROUND,
        quantity=1,
        amount_cents=50,
        idempotency_key="fl:lost",
    )
    fresh = UsageRecord.objects.unscoped().create(
        tenant=core_tenant,
        kind=UsageKind.FL_ROUND,
        quantity=1,
        amount_cents=50,
        idempotency_key="fl:just-recorded",
    )
    UsageRecord.objects.unscoped().filter(pk=lost.pk).update(
        created_at=timezone.now() - timedelta(minutes=10)
    )
    # when the beat entry runs on the real worker
    assert tasks.usage_sweep_stale.delay().get(timeout=60) == 1
    # then the lost charge is posted, once; the fresh one is left to its own task
    lost.refresh_from_db()
    fresh.refresh_from_db()
    assert (lost.status, fresh.status) == (UsageStatus.CHARGED, UsageStatus.PENDING)
    assert tenant_balance_cents(tenant=core_tenant) == 450
    assert tasks.usage_sweep_stale.delay().get(timeout=60) == 0
    assert ledger.reconcile().ok
