"""Metering: usage records, charging them once, contributors' share; the jobs port's implementation.

Jobs tells billing about work through :mod:`jobs.metering`; :class:`BillingMetering` answers.
A usage row is written in the caller's transaction (so it commits or rolls back with the work it
meters) under a unique idempotency key and a unique link to what it meters (a task, or a job's
round). Charging happens after commit, in a Celery task that retries database errors; a beat
sweep charges whatever a lost task left ``pending``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing import ledger
from billing.ledger import InsufficientFunds, Line
from billing.metering_batch import usage_meter_fc_batch
from billing.models import (
    AccountKind,
    EntryKind,
    JournalEntry,
    UsageKind,
    UsageRecord,
    UsageStatus,
)
from billing.money import format_cents
from billing.pricing import price_for
from jobs.metering import WorkQuote, WorkRefused
from jobs.models import Assignment, AssignmentStatus, Contributor, Job, Task
from jobs.services import job_pause_system
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Usage still pending this long after it was recorded lost its charge task: the sweep charges it.
STALE_PENDING_AFTER = timedelta(minutes=2)
BALANCE_EXHAUSTED = "Balance exhausted: buy credits, then resume the job."
# Usage the tenant owes and has not paid: its job's result is withheld until it is paid.
OWED_STATUSES = (UsageStatus.PENDING, UsageStatus.UNPAID)


# ---------------------------------------------------------------- balances and admission


def tenant_balance_cents(*, tenant: Tenant) -> int:
    """The tenant's prepaid balance."""
    return ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant).balance_cents


def quote_cents(*, tenant: Tenant, quote: WorkQuote) -> int:
    """What the quoted work would cost the tenant at its tier's prices."""
    price = price_for(tenant.tier)
    cents = price.fc_work_cents(quote.work_units) if quote.work_units else 0
    cents += quote.rounds * price.fl_round_cents
    if quote.bytes_transferred:
        cents += price.transfer_cents(bytes_transferred=quote.bytes_transferred)
    return cents


def work_admit(*, tenant: Tenant, quote: WorkQuote) -> None:
    """Refuse work a prepaid tenant cannot pay for (raises :class:`WorkRefused`)."""
    price = price_for(tenant.tier)
    next_cents = quote_cents(tenant=tenant, quote=quote)
    if not price.prepaid or next_cents == 0:
        return
    balance = tenant_balance_cents(tenant=tenant)
    if balance + price.overdraft_cents < next_cents:
        what = "task" if quote.work_units else "round"
        raise WorkRefused(
            f"Your balance ({format_cents(balance)}) cannot cover the next {what} "
            f"({format_cents(next_cents)}). Buy credits on the billing page, then start again."
        )


# ---------------------------------------------------------------- usage


def usage_emit(
    *,
    tenant: Tenant,
    kind: str,
    quantity: int,
    key: str,
    amount_cents: int,
    job: Job | None = None,
    task: Task | None = None,
    round_number: int | None = None,
) -> UsageRecord:
    """Record one usage event and charge it after commit. Idempotent by ``key``."""
    usage, created = UsageRecord.objects.for_tenant(tenant).get_or_create(
        idempotency_key=key,
        defaults={
            "tenant": tenant,
            "job": job,
            "task": task,
            "round_number": round_number,
            "kind": kind,
            "quantity": quantity,
            "amount_cents": amount_cents,
            "status": UsageStatus.FREE if amount_cents == 0 else UsageStatus.PENDING,
        },
    )
    if created and usage.status == UsageStatus.PENDING:
        from billing.tasks import usage_charge  # billing.tasks imports this module

        transaction.on_commit(lambda: usage_charge.delay(usage.pk))
    return usage


def usage_emit_fc_task(*, task: Task, job: Job) -> UsageRecord:
    """Meter a validated FC task; called inside the validation transaction."""
    tenant = job.tenant
    return usage_emit(
        tenant=tenant,
        kind=UsageKind.FC_WORK_UNITS,
        quantity=task.work_units,
        key=f"fc-task:{task.pk}",
        job=job,
        task=task,
        amount_cents=price_for(tenant.tier).fc_work_cents(task.work_units),
    )


def usage_emit_fl_round(*, job: Job, round_number: int, bytes_transferred: int) -> UsageRecord:
    """Meter a completed FL round: one event charges the round and its traffic."""
    tenant = job.tenant
    return usage_emit(
        tenant=tenant,
        kind=UsageKind.FL_ROUND,
        quantity=1,
        key=f"fl-round:{job.pk}:{round_number}",
        job=job,
        round_number=round_number,
        amount_cents=price_for(tenant.tier).fl_round_total_cents(
            bytes_transferred=bytes_transferred
        ),
    )


def job_withheld_cents(*, job: Job) -> int:
    """What the tenant owes for the job's work: unpaid usage and usage not charged yet."""
    owed = (
        UsageRecord.objects.for_tenant(job.tenant)
        .filter(job=job, status__in=OWED_STATUSES)
        .aggregate(total=Sum("amount_cents"))["total"]
    )
    return int(owed or 0)


# ---------------------------------------------------------------- charging


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    status: str
    entry_id: int | None = None


def usage_charge(*, usage_id: int) -> ChargeOutcome:
    """Charge one usage record exactly once (safe under Celery retries, replays and sweeps).

    Locks only the usage row (``FOR UPDATE OF`` it alone: locking the tenant row too blocked
    every insert that references the tenant, and deadlocked with the validating consumer), then
    the ledger accounts in id order. Prepaid tenants pay from their balance down to the tier's
    overdraft: when it would go lower the record waits as unpaid and, after commit, the job is
    paused by the jobs plane's own system service. Invoiced tenants accrue a receivable reported
    to Stripe's meter.
    """
    with transaction.atomic():
        usage = (
            UsageRecord.objects.unscoped()
            .select_for_update(of=("self",))
            .select_related("tenant")
            .get(pk=usage_id)
        )
        if usage.status not in OWED_STATUSES:
            return ChargeOutcome(status=usage.status, entry_id=usage.entry_id)
        tenant = usage.tenant
        price = price_for(tenant.tier)
        revenue = ledger.account_get(AccountKind.PLATFORM_REVENUE)
        if price.prepaid:
            payer = ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant)
            floors = {payer.pk: -price.overdraft_cents}
            status = UsageStatus.CHARGED
        else:
            payer = ledger.account_get(AccountKind.TENANT_RECEIVABLE, tenant=tenant)
            floors = {}
            status = UsageStatus.INVOICED
        try:
            entry, _ = ledger.entry_post(
                key=f"charge:usage:{usage.pk}",
                kind=EntryKind.CHARGE,
                tenant=tenant,
                floors=floors,
                memo=f"{usage.get_kind_display()} × {usage.quantity}"
                + (f" for job {usage.job_id}" if usage.job_id else ""),
                lines=[Line(payer, -usage.amount_cents), Line(revenue, usage.amount_cents)],
            )
        except InsufficientFunds:
            if usage.status != UsageStatus.UNPAID:
                usage.status = UsageStatus.UNPAID
                usage.save(update_fields=["status"])
                if usage.job_id is not None:
                    transaction.on_commit(
                        functools.partial(
                            job_pause_system, job_id=usage.job_id, reason=BALANCE_EXHAUSTED
                        )
                    )
            return ChargeOutcome(status=UsageStatus.UNPAID)
        usage.status = status
        usage.entry = entry
        usage.save(update_fields=["status", "entry"])
        if usage.task_id is not None:
            _contributor_earnings(usage, entry)
        if status == UsageStatus.INVOICED:
            from billing.tasks import usage_report_to_stripe  # billing.tasks imports this module

            transaction.on_commit(lambda: usage_report_to_stripe.delay(usage.pk))
        return ChargeOutcome(status=status, entry_id=entry.pk)


def _contributor_earnings(usage: UsageRecord, charge: JournalEntry) -> None:
    """Share a paid task's charge among the contributors whose replicas validated it."""
    share_total = int(usage.amount_cents * price_for(usage.tenant.tier).contributor_share)
    if share_total <= 0:
        return
    contributor_ids = sorted(
        set(
            Assignment.objects.unscoped()
            .filter(task_id=usage.task_id, status=AssignmentStatus.VALID)
            .values_list("contributor_id", flat=True)
        ),
        key=str,
    )
    each, remainder = divmod(share_total, len(contributor_ids) or 1)
    if not contributor_ids or not each:
        return
    contributors = Contributor.objects.in_bulk(contributor_ids)
    revenue = ledger.account_get(AccountKind.PLATFORM_REVENUE)
    lines = [Line(revenue, -(each * len(contributor_ids)))]
    lines.extend(
        Line(
            ledger.account_get(
                AccountKind.CONTRIBUTOR_EARNINGS, contributor=contributors[contributor_id]
            ),
            each,
        )
        for contributor_id in contributor_ids
    )
    # Not the tenant's entry: it moves platform revenue to contributors, so it carries no tenant.
    ledger.entry_post(
        key=f"earnings:usage:{usage.pk}",
        kind=EntryKind.CONTRIBUTOR_SHARE,
        lines=lines,
        memo=f"contributor share of charge {charge.pk} (remainder {remainder} kept)",
    )


def usage_charge_unpaid(*, tenant: Tenant) -> int:
    """After a top-up, charge what waited for balance; returns how many were charged."""
    charged = 0
    for usage_id in (
        UsageRecord.objects.for_tenant(tenant)
        .filter(status=UsageStatus.UNPAID)
        .order_by("id")
        .values_list("id", flat=True)
    ):
        if usage_charge(usage_id=usage_id).status == UsageStatus.CHARGED:
            charged += 1
        else:
            break
    return charged


def usage_stale_ids_unscoped(*, older_than: timedelta = STALE_PENDING_AFTER) -> list[int]:
    """Usage still pending well after it was recorded, across tenants (the sweep's work list)."""
    return list(
        UsageRecord.objects.unscoped()
        .filter(status=UsageStatus.PENDING, created_at__lt=timezone.now() - older_than)
        .order_by("id")
        .values_list("id", flat=True)
    )


def usage_sweep_stale(*, older_than: timedelta = STALE_PENDING_AFTER) -> int:
    """Charge usage whose charge task was lost; returns how many records left ``pending``."""
    settled = 0
    for usage_id in usage_stale_ids_unscoped(older_than=older_than):
        outcome = usage_charge(usage_id=usage_id)
        settled += int(outcome.status != UsageStatus.PENDING)
    if settled:
        logger.warning("charged %d usage record(s) left pending", settled)
    return settled


# ---------------------------------------------------------------- batches (group commit)


class BillingMetering:
    """The money plane's answer to :class:`jobs.metering.Metering`."""

    def admit(self, *, tenant: Tenant, quote: WorkQuote) -> None:
        work_admit(tenant=tenant, quote=quote)

    def task_validated(self, *, task: Task, job: Job) -> None:
        from billing.tasks import credits_award_task  # billing.tasks imports this module

        usage_emit_fc_task(task=task, job=job)
        transaction.on_commit(lambda: credits_award_task.delay(task.pk))

    def tasks_validated(self, *, tasks: list[tuple[Task, Job]]) -> None:
        usage_meter_fc_batch(tasks=tasks)

    def round_completed(
        self, *, job: Job, round_number: int, bytes_transferred: int, contributor_ids: list
    ) -> None:
        from billing.tasks import credits_award_round  # billing.tasks imports this module

        usage_emit_fl_round(job=job, round_number=round_number, bytes_transferred=bytes_transferred)
        ids = [str(contributor_id) for contributor_id in contributor_ids]
        transaction.on_commit(lambda: credits_award_round.delay(str(job.pk), round_number, ids))

    def withheld_cents(self, *, job: Job) -> int:
        return job_withheld_cents(job=job)
