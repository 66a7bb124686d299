"""Celery tasks of billing: each takes ids, is idempotent, and owns its retries."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from billing import credits, ledger, metering, reconciliation, stripe_gateway
from billing.models import Payout, UsageRecord
from billing.profiles import billing_profile

logger = logging.getLogger(__name__)

# A lost connection, a deadlock or a serialization failure (all OperationalError) must not lose
# a charge: the task runs again, and the charge's idempotency key makes the rerun harmless.
DATABASE_RETRY = (OSError, OperationalError, InterfaceError)


@shared_task(acks_late=True, autoretry_for=DATABASE_RETRY, retry_backoff=True, max_retries=8)
def usage_charge(usage_id: int) -> str:
    """Charge one usage record (a retry after success changes nothing)."""
    return metering.usage_charge(usage_id=usage_id).status


@shared_task(acks_late=True, autoretry_for=DATABASE_RETRY, retry_backoff=True, max_retries=8)
def credits_award_task(task_id: int) -> int:
    """Award contributor credits for a validated task's replicas."""
    return credits.credits_award_task(task_id=task_id)


@shared_task(acks_late=True, autoretry_for=DATABASE_RETRY, retry_backoff=True, max_retries=8)
def credits_award_round(job_id: str, round_number: int, contributor_ids: list[str]) -> int:
    """Award contributor credits for the updates an FL round included."""
    return credits.credits_award_round(
        job_id=job_id, round_number=round_number, contributor_ids=contributor_ids
    )


@shared_task(acks_late=True, autoretry_for=DATABASE_RETRY, retry_backoff=True, max_retries=3)
def usage_sweep_stale() -> int:
    """Charge usage a lost task left pending (beat)."""
    return metering.usage_sweep_stale()


@shared_task(acks_late=True, autoretry_for=(Exception,), retry_backoff=True, max_retries=10)
def usage_report_to_stripe(usage_id: int) -> bool:
    """Report invoiced usage to Stripe's billing meter, once (Stripe dedupes on the identifier)."""
    client = stripe_gateway.gateway()
    usage = UsageRecord.objects.unscoped().select_related("tenant").get(pk=usage_id)
    if client is None or usage.reported_to_stripe_at is not None:
        return False
    profile = billing_profile(tenant=usage.tenant)
    if not profile.stripe_customer_id:
        return False
    client.meter_event_create(
        event_name=settings.STRIPE_METER_EVENT_NAME,
        customer_id=profile.stripe_customer_id,
        value=usage.amount_cents,
        identifier=f"usage-{usage.pk}",
    )
    UsageRecord.objects.unscoped().filter(pk=usage.pk).update(reported_to_stripe_at=timezone.now())
    return True


@shared_task(acks_late=True)
def ledger_reconcile() -> bool:
    """Prove the books balance; log loudly when they do not."""
    report = ledger.reconcile()
    if not report.ok:
        logger.error("ledger reconciliation failed: %s", report)
    return report.ok


@shared_task(acks_late=True, autoretry_for=DATABASE_RETRY, retry_backoff=True, max_retries=3)
def stripe_reconcile() -> bool:
    """Reconcile the ledger against Stripe (beat, hourly); log every discrepancy loudly."""
    report = reconciliation.stripe_reconcile()
    for discrepancy in report.discrepancies:
        logger.error("reconciliation: %s", discrepancy)
    return report.ok


@shared_task(acks_late=True, autoretry_for=(Exception,), retry_backoff=True, max_retries=10)
def payout_transfer(payout_id: str) -> str:
    """Send an approved payout through Stripe Connect (the idempotency key makes retries safe)."""
    payout = Payout.objects.select_related("contributor").get(pk=payout_id)
    client = stripe_gateway.gateway()
    if client is None or payout.stripe_transfer_id or not payout.contributor.stripe_account_id:
        return payout.stripe_transfer_id
    transfer_id = client.transfer_create(
        payout_id=str(payout.pk),
        amount_cents=payout.amount_cents,
        currency="usd",
        destination=payout.contributor.stripe_account_id,
    )
    Payout.objects.filter(pk=payout.pk, stripe_transfer_id="").update(
        stripe_transfer_id=transfer_id
    )
    return transfer_id
