"""Contributor credits: reputation points for validated work, awarded once each, revocable."""

from __future__ import annotations

from django.db import transaction

from billing import ledger
from billing.ledger import Line
from billing.models import AccountKind, EntryKind, JournalEntry
from billing.pricing import CREDITS_PER_ROUND_UPDATE, credits_for
from jobs.models import Assignment, AssignmentStatus, Contributor
from tenants.models import User
from tenants.services import audit_record


def credits_award_task(*, task_id: int) -> int:
    """Award contributor credits (points) for every validated replica of a task, once each."""
    awarded = 0
    replicas = (
        Assignment.objects.unscoped()
        .filter(task_id=task_id, status=AssignmentStatus.VALID)
        .select_related("contributor", "task", "tenant")
    )
    issuance = ledger.account_get(AccountKind.CREDIT_ISSUANCE)
    for replica in replicas:
        credits = credits_for(replica.task.work_units, replica.tenant.tier)
        account = ledger.account_get(
            AccountKind.CONTRIBUTOR_CREDITS, contributor=replica.contributor
        )
        _, created = ledger.entry_post(
            key=f"credit:assignment:{replica.pk}",
            kind=EntryKind.CREDIT_AWARD,
            lines=[Line(account, credits), Line(issuance, -credits)],
            memo=f"validated replica of task {task_id}",
        )
        awarded += int(created)
    return awarded


def credits_award_round(*, job_id: str, round_number: int, contributor_ids: list[str]) -> int:
    """Award credits to the contributors whose updates an FL round included, once each."""
    awarded = 0
    issuance = ledger.account_get(AccountKind.CREDIT_ISSUANCE)
    for contributor in Contributor.objects.filter(pk__in=contributor_ids).order_by("pk"):
        account = ledger.account_get(AccountKind.CONTRIBUTOR_CREDITS, contributor=contributor)
        _, created = ledger.entry_post(
            key=f"credit:round:{job_id}:{round_number}:{contributor.pk}",
            kind=EntryKind.CREDIT_AWARD,
            lines=[
                Line(account, CREDITS_PER_ROUND_UPDATE),
                Line(issuance, -CREDITS_PER_ROUND_UPDATE),
            ],
            memo=f"update included in round {round_number} of job {job_id}",
        )
        awarded += int(created)
    return awarded


@transaction.atomic
def credits_revoke_contributor(*, contributor: Contributor, actor: User | None, reason: str) -> int:
    """A contributor caught cheating loses every credit awarded (reversing entries)."""
    entries = JournalEntry.objects.filter(
        kind=EntryKind.CREDIT_AWARD,
        postings__account__contributor=contributor,
        reversed_by__isnull=True,
    ).distinct()
    revoked = 0
    for entry in entries:
        _, created = ledger.entry_reverse(entry=entry, memo=f"revoked: {reason}", created_by=actor)
        revoked += int(created)
    audit_record(
        tenant=None,
        actor=actor,
        action="contributor.credits_revoked",
        target=str(contributor.pk),
        reason=reason,
        entries=revoked,
    )
    return revoked
