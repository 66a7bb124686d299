"""Metering validated FC tasks in batches (group commit): one usage row per task, one charge
and one contributor-share entry per tenant per batch, one credit entry per batch."""

from __future__ import annotations

import functools
import logging
from collections import defaultdict

from django.db import transaction

from billing import ledger, stripe_gateway
from billing.ledger import InsufficientFunds, Line
from billing.models import (
    Account,
    AccountKind,
    EntryKind,
    UsageKind,
    UsageRecord,
    UsageStatus,
)
from billing.money import CREDIT, CURRENCY
from billing.pricing import credits_for, price_for
from jobs.models import Assignment, AssignmentStatus, Contributor, Job, Task

logger = logging.getLogger(__name__)

# Usage still pending this long after it was recorded lost its charge task: the sweep charges it.


def _accounts_for_contributors(kind: str, contributor_ids: set) -> dict:
    """Each contributor's account of ``kind``: one read, and for contributors without one (their
    first credit or share) one read of which exist, one insert of their accounts that skips any
    another transaction created meanwhile (the unique constraint decides; PostgreSQL waits for
    that transaction) and one read of those accounts. Created one by one, a batch of new
    contributors cost four statements each (read, savepoint, insert, release): a cohort of
    10,000 new workers' first credits made them most of the statements per validated replica."""
    currency = CREDIT if kind == AccountKind.CONTRIBUTOR_CREDITS else CURRENCY
    mine = Account.objects.filter(kind=kind, currency=currency)
    accounts = {
        account.contributor_id: account
        for account in mine.filter(contributor_id__in=contributor_ids)
    }
    missing = contributor_ids - accounts.keys()
    if missing:
        missing = set(Contributor.objects.filter(pk__in=missing).values_list("pk", flat=True))
        Account.objects.bulk_create(
            [Account(kind=kind, currency=currency, contributor_id=c) for c in missing],
            ignore_conflicts=True,
        )
        accounts.update(
            (account.contributor_id, account) for account in mine.filter(contributor_id__in=missing)
        )
    return accounts


def usage_meter_fc_batch(*, tasks: list[tuple[Task, Job]]) -> list[UsageRecord]:
    """Meter validated FC tasks of one transaction: one usage row per task (keys as
    :func:`usage_emit_fc_task`), one charge entry per tenant, one contributor-share entry per
    tenant and one credit entry for the batch.

    The caller holds the tasks' row locks, so reading which keys exist before inserting cannot
    race another meterer of the same task (and the unique key still backs it). Entry keys derive
    from the batch's new usage ids (unique, and rolled back with the batch), so a retried batch
    posts once. Tasks metered before (a replay) are skipped whole: their credits went with them.
    A prepaid tenant whose balance cannot cover the batch falls back to charging record by
    record after commit (:func:`usage_charge`), which marks what cannot be paid and pauses the job.
    """
    keys = {f"fc-task:{task.pk}": (task, job) for task, job in tasks}
    existing = set(
        UsageRecord.objects.unscoped()
        .filter(idempotency_key__in=keys)
        .values_list("idempotency_key", flat=True)
    )
    records = []
    for key, (task, job) in keys.items():
        if key in existing:
            continue
        amount = price_for(job.tenant.tier).fc_work_cents(task.work_units)
        records.append(
            UsageRecord(
                tenant=job.tenant,
                job=job,
                task=task,
                kind=UsageKind.FC_WORK_UNITS,
                quantity=task.work_units,
                amount_cents=amount,
                idempotency_key=key,
                status=UsageStatus.FREE if amount == 0 else UsageStatus.PENDING,
            )
        )
    if not records:
        return []
    UsageRecord.objects.bulk_create(records)
    valid: dict[int, list] = defaultdict(list)
    for task_id, contributor_id in (
        Assignment.objects.unscoped()
        .filter(task_id__in=[r.task_id for r in records], status=AssignmentStatus.VALID)
        .values_list("task_id", "contributor_id")
    ):
        valid[task_id].append(contributor_id)
    by_tenant: dict = defaultdict(list)
    for record in records:
        if record.status == UsageStatus.PENDING:
            by_tenant[record.tenant_id].append(record)
    for tenant_records in by_tenant.values():
        _usage_charge_batch(tenant_records, valid)
    _credits_award_batch(records, valid)
    return records


def _batch_key(records: list[UsageRecord]) -> str:
    ids = sorted(r.pk for r in records)
    return f"{ids[0]}-{ids[-1]}:{len(ids)}"


def _usage_charge_batch(records: list[UsageRecord], valid: dict[int, list]) -> None:
    """One charge entry for one tenant's records of a batch, and one contributor-share entry."""
    tenant = records[0].tenant
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
    total = sum(r.amount_cents for r in records)
    key = _batch_key(records)
    try:
        entry, _ = ledger.entry_post(
            key=f"charge:usage-batch:{key}",
            kind=EntryKind.CHARGE,
            tenant=tenant,
            floors=floors,
            memo=f"{len(records)} validated FC tasks (usage {key})",
            lines=[Line(payer, -total), Line(revenue, total)],
        )
    except InsufficientFunds:
        # Record by record, after commit: what fits is charged, the rest waits as unpaid.
        from billing.tasks import usage_charge as usage_charge_task

        for record in records:
            transaction.on_commit(functools.partial(usage_charge_task.delay, record.pk))
        return
    UsageRecord.objects.unscoped().filter(pk__in=[r.pk for r in records]).update(status=status)
    if status == UsageStatus.INVOICED and stripe_gateway.gateway() is not None:
        from billing.tasks import usage_report_to_stripe  # billing.tasks imports this module

        for record in records:
            transaction.on_commit(functools.partial(usage_report_to_stripe.delay, record.pk))
    shares: dict = defaultdict(int)
    for record in records:
        contributor_ids = sorted(set(valid.get(record.task_id, ())), key=str)
        share_total = int(record.amount_cents * price.contributor_share)
        each = share_total // (len(contributor_ids) or 1)
        if not contributor_ids or not each:
            continue
        for contributor_id in contributor_ids:
            shares[contributor_id] += each
    if not shares:
        return
    accounts = _accounts_for_contributors(AccountKind.CONTRIBUTOR_EARNINGS, set(shares))
    lines = [Line(revenue, -sum(shares.values()))]
    lines.extend(Line(accounts[c], cents) for c, cents in sorted(shares.items(), key=str))
    ledger.entry_post(
        key=f"earnings:usage-batch:{key}",
        kind=EntryKind.CONTRIBUTOR_SHARE,
        lines=lines,
        memo=f"contributor share of charge {entry.pk} (remainders kept)",
    )


def _credits_award_batch(records: list[UsageRecord], valid: dict[int, list]) -> None:
    """One credit entry for every validated replica of the batch's tasks."""
    tiers = {r.tenant_id: r.tenant.tier for r in records}
    credits: dict = defaultdict(int)
    for record in records:
        for contributor_id in valid.get(record.task_id, ()):
            credits[contributor_id] += credits_for(record.quantity, tiers[record.tenant_id])
    credits = {c: n for c, n in credits.items() if n}
    if not credits:
        return
    accounts = _accounts_for_contributors(AccountKind.CONTRIBUTOR_CREDITS, set(credits))
    issuance = ledger.account_get(AccountKind.CREDIT_ISSUANCE)
    lines = [Line(issuance, -sum(credits.values()))]
    lines.extend(Line(accounts[c], n) for c, n in sorted(credits.items(), key=str))
    ledger.entry_post(
        key=f"credit:usage-batch:{_batch_key(records)}",
        kind=EntryKind.CREDIT_AWARD,
        lines=lines,
        memo=f"validated replicas of {len(records)} tasks",
    )


# ---------------------------------------------------------------- the port
