"""Billing services: metering, charging, top-ups, refunds, credits, payouts, admin operations.

Every money movement is one ledger entry with an idempotency key derived from what caused it
(a task, a Stripe object, a payout), so retries, replays and redeliveries post once.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from billing import ledger
from billing.ledger import InsufficientFunds, Line
from billing.models import (
    AccountKind,
    BillingProfile,
    EntryKind,
    JournalEntry,
    Payout,
    PayoutStatus,
    Posting,
    StripeEvent,
    UsageKind,
    UsageRecord,
    UsageStatus,
)
from billing.money import CURRENCY, format_cents
from billing.pricing import MIN_PAYOUT_CENTS, credits_for, price_for
from tenants.models import Tenant, User
from tenants.roles import Action
from tenants.services import audit_record, require_role
from tenants.tiers import Tier

logger = logging.getLogger(__name__)

MIN_TOPUP_CENTS = 500
MAX_TOPUP_CENTS = 1_000_000


# ---------------------------------------------------------------- balances


def tenant_balance_cents(*, tenant: Tenant) -> int:
    """The tenant's prepaid balance."""
    return ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant).balance_cents


def next_task_cents(*, tenant: Tenant, work_units: int) -> int:
    """What one task of ``work_units`` would cost the tenant."""
    return price_for(tenant.tier).fc_work_cents(work_units)


def ensure_can_run(*, tenant: Tenant, next_cents: int) -> None:
    """Refuse to start or resume work a prepaid tenant cannot pay for."""
    price = price_for(tenant.tier)
    if not price.prepaid or next_cents == 0:
        return
    balance = tenant_balance_cents(tenant=tenant)
    if balance + price.overdraft_cents < next_cents:
        raise ValidationError(
            f"Your balance ({format_cents(balance)}) cannot cover the next task ({format_cents(next_cents)}). "
            "Buy credits on the billing page, then start again."
        )


# ---------------------------------------------------------------- metering and charging


def usage_emit(
    *,
    tenant: Tenant,
    kind: str,
    quantity: int,
    key: str,
    job: Any = None,
    round_number: int | None = None,
    amount_cents: int,
) -> UsageRecord:
    """Record one usage event (any job kind) and charge it after commit. Idempotent by ``key``."""
    usage, created = UsageRecord.objects.for_tenant(tenant).get_or_create(
        idempotency_key=key,
        defaults={
            "tenant": tenant,
            "job": job,
            "round_number": round_number,
            "kind": kind,
            "quantity": quantity,
            "amount_cents": amount_cents,
            "status": UsageStatus.FREE if amount_cents == 0 else UsageStatus.PENDING,
        },
    )
    if created and usage.status == UsageStatus.PENDING:
        from billing.tasks import usage_charge

        transaction.on_commit(lambda: usage_charge.delay(usage.pk))
    return usage


def usage_emit_fc_task(*, task: Any, job: Any) -> UsageRecord:
    """Meter a validated FC task; called inside the validation transaction."""
    tenant = job.tenant
    return usage_emit(
        tenant=tenant,
        kind=UsageKind.FC_WORK_UNITS,
        quantity=task.work_units,
        key=f"fc-task:{task.pk}",
        job=job,
        amount_cents=price_for(tenant.tier).fc_work_cents(task.work_units),
    )


def usage_emit_fl_round(*, job: Any, round_number: int, bytes_transferred: int) -> UsageRecord:
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


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    status: str
    entry_id: int | None = None


@transaction.atomic
def usage_charge(*, usage_id: int) -> ChargeOutcome:
    """Charge one usage record exactly once (safe under Celery retries and replays).

    Prepaid tenants pay from their balance, which may not go below the tier's overdraft: when it
    would, the record waits as unpaid and the job pauses with a clear reason. Invoiced tenants
    accrue a receivable reported to Stripe's meter.
    """
    usage = (
        UsageRecord.objects.unscoped().select_for_update().select_related("tenant").get(pk=usage_id)
    )
    if usage.status not in (UsageStatus.PENDING, UsageStatus.UNPAID):
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
            _pause_for_balance(usage)
        return ChargeOutcome(status=UsageStatus.UNPAID)
    usage.status = status
    usage.entry = entry
    usage.save(update_fields=["status", "entry"])
    if usage.kind == UsageKind.FC_WORK_UNITS and usage.job_id:
        _contributor_earnings(usage, entry)
    if status == UsageStatus.INVOICED:
        from billing.tasks import usage_report_to_stripe

        transaction.on_commit(lambda: usage_report_to_stripe.delay(usage.pk))
    return ChargeOutcome(status=status, entry_id=entry.pk)


def _pause_for_balance(usage: UsageRecord) -> None:
    from jobs.models import Job, JobStatus
    from jobs.services import job_pause

    if usage.job_id is None:
        return
    job = Job.objects.unscoped().get(pk=usage.job_id)
    if job.status == JobStatus.RUNNING:
        job_pause(
            job=job,
            actor_role="owner",
            reason="Balance exhausted: buy credits, then resume the job.",
        )


def _contributor_earnings(usage: UsageRecord, charge: JournalEntry) -> None:
    """Share a paid task's charge among the contributors whose replicas validated it."""
    from jobs.models import Assignment, AssignmentStatus

    share_total = int(usage.amount_cents * price_for(usage.tenant.tier).contributor_share)
    if share_total <= 0:
        return
    task_id = int(usage.idempotency_key.split(":", 1)[1])
    contributors = sorted(
        set(
            Assignment.objects.unscoped()
            .filter(task_id=task_id, status=AssignmentStatus.VALID)
            .values_list("contributor_id", flat=True)
        ),
        key=str,
    )
    if not contributors:
        return
    each, remainder = divmod(share_total, len(contributors))
    revenue = ledger.account_get(AccountKind.PLATFORM_REVENUE)
    lines = [Line(revenue, -(each * len(contributors)))] if each else []
    for contributor_id in contributors:
        if each:
            lines.append(
                Line(
                    ledger.account_get(
                        AccountKind.CONTRIBUTOR_EARNINGS, contributor=_contributor(contributor_id)
                    ),
                    each,
                )
            )
    if lines:
        ledger.entry_post(
            key=f"earnings:usage:{usage.pk}",
            kind=EntryKind.CHARGE,
            tenant=usage.tenant,
            lines=lines,
            memo=f"contributor share of charge {charge.pk} (remainder {remainder} kept)",
        )


def _contributor(contributor_id: Any) -> Any:
    from jobs.models import Contributor

    return Contributor.objects.get(pk=contributor_id)


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


# ---------------------------------------------------------------- contributor credits


def credits_award_task(*, task_id: int) -> int:
    """Award contributor credits (points) for every validated replica of a task, once each."""
    from jobs.models import Assignment, AssignmentStatus

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


@transaction.atomic
def credits_revoke_contributor(*, contributor: Any, actor: User | None, reason: str) -> int:
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


# ---------------------------------------------------------------- top-ups, refunds, Stripe events


def billing_profile(*, tenant: Tenant) -> BillingProfile:
    """The tenant's billing profile (created on first use)."""
    profile, _ = BillingProfile.objects.for_tenant(tenant).get_or_create(tenant=tenant)
    return profile


@dataclass(frozen=True, slots=True)
class CheckoutStart:
    url: str
    session_id: str
    test_mode: bool


def checkout_start(
    *, tenant: Tenant, actor: User, actor_role: str, amount_cents: int, site_url: str
) -> CheckoutStart:
    """Start a top-up: a Stripe Checkout Session (or the local test-mode checkout)."""
    require_role(membership_role=actor_role, action=Action.MANAGE_BILLING)
    if not MIN_TOPUP_CENTS <= amount_cents <= MAX_TOPUP_CENTS:
        raise ValidationError(
            {
                "amount_cents": f"Top up between {format_cents(MIN_TOPUP_CENTS)} and {format_cents(MAX_TOPUP_CENTS)}."
            }
        )
    from billing.stripe_gateway import gateway

    topup_id = uuid.uuid4().hex
    client = gateway()
    if client is None:
        session_id = f"cs_test_local_{topup_id}"
        return CheckoutStart(
            url=f"{site_url}/billing/test-checkout/{session_id}/?amount={amount_cents}",
            session_id=session_id,
            test_mode=True,
        )
    profile = billing_profile(tenant=tenant)
    if not profile.stripe_customer_id:
        profile.stripe_customer_id = client.customer_create(
            tenant_id=str(tenant.pk), name=tenant.name, email=actor.email
        )
        profile.save(update_fields=["stripe_customer_id"])
    session = client.checkout_session_create(
        topup_id=topup_id,
        customer_id=profile.stripe_customer_id,
        tenant_id=str(tenant.pk),
        amount_cents=amount_cents,
        currency=CURRENCY,
        success_url=f"{site_url}/billing/?topup=success",
        cancel_url=f"{site_url}/billing/?topup=cancelled",
    )
    return CheckoutStart(url=session.url, session_id=session.id, test_mode=False)


@transaction.atomic
def topup_fulfil(
    *, session_id: str, tenant_id: str, amount_cents: int, payment_intent: str = ""
) -> JournalEntry:
    """Credit a completed checkout to the tenant's balance, once per session."""
    tenant = Tenant.objects.get(pk=tenant_id)
    entry, created = ledger.entry_post(
        key=f"topup:{session_id}",
        kind=EntryKind.TOPUP,
        tenant=tenant,
        external_ref=payment_intent,
        memo=f"top-up {format_cents(amount_cents)}",
        lines=[
            Line(ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant), amount_cents),
            Line(ledger.account_get(AccountKind.STRIPE_CLEARING), -amount_cents),
        ],
    )
    if created:
        usage_charge_unpaid(tenant=tenant)
    return entry


def test_mode_checkout_complete(
    *, tenant: Tenant, actor: User, actor_role: str, session_id: str, amount_cents: int
) -> JournalEntry:
    """Test mode only: complete a local checkout as the webhook would. Refused when Stripe is live."""
    from billing.stripe_gateway import gateway

    require_role(membership_role=actor_role, action=Action.MANAGE_BILLING)
    if gateway() is not None:
        raise PermissionDenied("Stripe is configured: payments complete through Stripe only.")
    if (
        not session_id.startswith("cs_test_local_")
        or not MIN_TOPUP_CENTS <= amount_cents <= MAX_TOPUP_CENTS
    ):
        raise ValidationError("Not a test-mode checkout.")
    return topup_fulfil(session_id=session_id, tenant_id=str(tenant.pk), amount_cents=amount_cents)


class WebhookRejected(Exception):  # noqa: N818 - a domain outcome
    """The webhook's signature or payload is invalid."""


def stripe_webhook_receive(*, payload: bytes, signature: str, secret: str) -> str:
    """Verify → store once (unique event id) → handle under locks. Returns what happened."""
    from billing.stripe_gateway import SignatureError, webhook_event

    try:
        event = webhook_event(payload=payload, signature=signature, secret=secret)
    except (SignatureError, ValueError) as exc:
        raise WebhookRejected(str(exc)) from exc
    with transaction.atomic():
        stored, created = StripeEvent.objects.get_or_create(
            event_id=event["id"], defaults={"type": event.get("type", ""), "payload": event}
        )
        if not created and stored.processed_at is not None:
            return "duplicate"
        stored = StripeEvent.objects.select_for_update().get(pk=stored.pk)
        if stored.processed_at is not None:
            return "duplicate"
        outcome = _handle_event(event)
        stored.processed_at = timezone.now()
        stored.save(update_fields=["processed_at"])
    return outcome


def _handle_event(event: dict[str, Any]) -> str:
    kind = event.get("type", "")
    obj = event.get("data", {}).get("object", {})
    if kind == "checkout.session.completed":
        if obj.get("mode") != "payment" or obj.get("payment_status") != "paid":
            return "ignored"
        metadata = obj.get("metadata") or {}
        tenant_id = metadata.get("tenant_id") or obj.get("client_reference_id")
        amount = int(obj.get("amount_total") or metadata.get("amount_cents") or 0)
        if not tenant_id or amount <= 0:
            return "ignored"
        topup_fulfil(
            session_id=obj["id"],
            tenant_id=tenant_id,
            amount_cents=amount,
            payment_intent=obj.get("payment_intent") or "",
        )
        return "topup"
    if kind == "payment_intent.succeeded":
        metadata = obj.get("metadata") or {}
        if metadata.get("topup_id", "").startswith("auto-"):
            topup_fulfil(
                session_id=metadata["topup_id"],
                tenant_id=metadata["tenant_id"],
                amount_cents=int(obj["amount"]),
                payment_intent=obj["id"],
            )
            return "topup"
        return "ignored"
    if kind == "charge.refunded":
        return _refunds_record(obj)
    if kind in ("invoice.paid", "invoice.payment_succeeded"):
        return _invoice_paid(obj)
    return "ignored"


def _refunds_record(charge: dict[str, Any]) -> str:
    """Mirror refunds made in Stripe (e.g. from its dashboard) in the ledger, once per refund."""
    refunds = (charge.get("refunds") or {}).get("data") or []
    topup = JournalEntry.objects.filter(
        kind=EntryKind.TOPUP, external_ref=charge.get("payment_intent") or "-"
    ).first()
    if topup is None:
        return "ignored"
    for refund in refunds:
        _refund_post(
            topup=topup,
            refund_id=refund["id"],
            amount_cents=int(refund["amount"]),
            actor=None,
            reason="refunded in Stripe",
        )
    return "refund"


def _refund_post(
    *, topup: JournalEntry, refund_id: str, amount_cents: int, actor: User | None, reason: str
) -> JournalEntry:
    tenant = topup.tenant
    entry, _ = ledger.entry_post(
        key=f"refund:{refund_id}",
        kind=EntryKind.REFUND,
        tenant=tenant,
        created_by=actor,
        external_ref=refund_id,
        parent=topup,
        memo=f"refund {format_cents(amount_cents)}: {reason}",
        lines=[
            Line(ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant), -amount_cents),
            Line(ledger.account_get(AccountKind.STRIPE_CLEARING), amount_cents),
        ],
    )
    return entry


def _invoice_paid(invoice: dict[str, Any]) -> str:
    profile = (
        BillingProfile.objects.unscoped()
        .filter(stripe_customer_id=invoice.get("customer") or "-")
        .select_related("tenant")
        .first()
    )
    if profile is None or not invoice.get("amount_paid"):
        return "ignored"
    amount = int(invoice["amount_paid"])
    ledger.entry_post(
        key=f"invoice:{invoice['id']}",
        kind=EntryKind.INVOICE_PAYMENT,
        tenant=profile.tenant,
        external_ref=invoice["id"],
        memo=f"invoice {invoice.get('number') or invoice['id']} paid",
        lines=[
            Line(ledger.account_get(AccountKind.TENANT_RECEIVABLE, tenant=profile.tenant), amount),
            Line(ledger.account_get(AccountKind.STRIPE_CLEARING), -amount),
        ],
    )
    return "invoice"


@transaction.atomic
def refund_issue(
    *, topup: JournalEntry, amount_cents: int, actor: User, reason: str
) -> JournalEntry:
    """Admin refund of (part of) a top-up: through Stripe when live, then one ledger entry."""
    from billing.stripe_gateway import gateway

    if topup.kind != EntryKind.TOPUP:
        raise ValidationError("Only top-ups can be refunded.")
    topup = JournalEntry.objects.select_for_update().get(pk=topup.pk)  # serialises refunds of it
    topped = sum(
        p.amount_cents for p in topup.postings.filter(account__kind=AccountKind.TENANT_BALANCE)
    )
    refunded = sum(
        -p.amount_cents
        for p in Posting.objects.filter(
            entry__parent=topup,
            entry__kind=EntryKind.REFUND,
            account__kind=AccountKind.TENANT_BALANCE,
        )
    )
    if not 0 < amount_cents <= topped - refunded:
        raise ValidationError(f"Refund between 1 and {topped - refunded} cents.")
    client = gateway()
    key = f"{topup.pk}-{refunded}-{amount_cents}"
    refund_id = (
        client.refund_create(
            payment_intent=topup.external_ref, amount_cents=amount_cents, refund_key=key
        )
        if client and topup.external_ref
        else f"local-{key}"
    )
    entry = _refund_post(
        topup=topup, refund_id=refund_id, amount_cents=amount_cents, actor=actor, reason=reason
    )
    audit_record(
        tenant=topup.tenant,
        actor=actor,
        action="billing.refund",
        target=str(topup.pk),
        amount_cents=amount_cents,
        reason=reason,
    )
    return entry


@transaction.atomic
def balance_adjust(
    *, tenant: Tenant, amount_cents: int, actor: User, reason: str, promotional: bool = False
) -> JournalEntry:
    """Admin credit adjustment or promotional credit (positive or negative), with a reason."""
    if amount_cents == 0 or not reason.strip():
        raise ValidationError("Give a non-zero amount and a reason.")
    source = AccountKind.PROMOTIONS if promotional else AccountKind.PLATFORM_REVENUE
    entry, _ = ledger.entry_post(
        key=f"adjust:{uuid.uuid4().hex}",
        kind=EntryKind.PROMOTION if promotional else EntryKind.ADJUSTMENT,
        tenant=tenant,
        created_by=actor,
        memo=reason,
        lines=[
            Line(ledger.account_get(AccountKind.TENANT_BALANCE, tenant=tenant), amount_cents),
            Line(ledger.account_get(source), -amount_cents),
        ],
    )
    audit_record(
        tenant=tenant,
        actor=actor,
        action="billing.promotion" if promotional else "billing.adjustment",
        target=tenant.name,
        amount_cents=amount_cents,
        reason=reason,
    )
    return entry


# ---------------------------------------------------------------- tiers


SELF_SERVE_TIERS = (Tier.COMMUNITY, Tier.CORE)


@transaction.atomic
def tenant_tier_change(*, tenant: Tenant, actor: User, actor_role: str, tier: str) -> Tenant:
    """Owners move between Community and FL Core themselves; Enterprise is a contract (admin)."""
    require_role(membership_role=actor_role, action=Action.MANAGE_BILLING)
    if tier not in SELF_SERVE_TIERS:
        raise ValidationError(
            "FL Enterprise is a contract: contact us and an administrator sets it up."
        )
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if locked.tier == Tier.ENTERPRISE:
        raise ValidationError("Enterprise contracts are changed by an administrator.")
    previous = locked.tier
    locked.tier = tier
    locked.save(update_fields=["tier"])
    audit_record(
        tenant=locked,
        actor=actor,
        action="tenant.tier_changed",
        target=locked.name,
        previous=previous,
        tier=tier,
    )
    return locked


@transaction.atomic
def enterprise_subscription_start(
    *, tenant: Tenant, actor: User, email: str, price_id: str, payment_method: str | None = None
) -> BillingProfile:
    """Admin: put a tenant on an FL Enterprise contract (Stripe customer + subscription)."""
    from billing.stripe_gateway import gateway

    client = gateway()
    if client is None:
        raise ValidationError("Stripe is not configured: Enterprise contracts need it.")
    if not price_id:
        raise ValidationError("Set STRIPE_ENTERPRISE_PRICE_ID to the contract's price.")
    profile = (
        BillingProfile.objects.for_tenant(tenant).select_for_update().filter(tenant=tenant).first()
    )
    profile = profile or billing_profile(tenant=tenant)
    if not profile.stripe_customer_id:
        profile.stripe_customer_id = client.customer_create(
            tenant_id=str(tenant.pk), name=tenant.name, email=email
        )
    if not profile.stripe_subscription_id:
        profile.stripe_subscription_id = client.subscription_create(
            customer_id=profile.stripe_customer_id,
            price_id=price_id,
            tenant_id=str(tenant.pk),
            payment_method=payment_method,
        )
    profile.save(update_fields=["stripe_customer_id", "stripe_subscription_id"])
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.ENTERPRISE)
    audit_record(
        tenant=tenant,
        actor=actor,
        action="billing.enterprise_started",
        target=tenant.name,
        subscription=profile.stripe_subscription_id,
    )
    return profile


# ---------------------------------------------------------------- payouts


def contributor_earnings_cents(*, contributor: Any) -> int:
    """A contributor's unpaid earnings."""
    return ledger.account_get(
        AccountKind.CONTRIBUTOR_EARNINGS, contributor=contributor
    ).balance_cents


@transaction.atomic
def payout_request(*, contributor: Any) -> Payout:
    """Ask to be paid all current earnings (above the threshold, one open request at a time)."""
    amount = contributor_earnings_cents(contributor=contributor)
    if amount < MIN_PAYOUT_CENTS:
        raise ValidationError(
            f"Payouts start at {format_cents(MIN_PAYOUT_CENTS)}; you have {format_cents(amount)}."
        )
    if Payout.objects.filter(
        contributor=contributor, status__in=[PayoutStatus.REQUESTED, PayoutStatus.HELD]
    ).exists():
        raise ValidationError("You already have a payout request open.")
    return Payout.objects.create(contributor=contributor, amount_cents=amount)


@transaction.atomic
def payout_decide(*, payout: Payout, approve: bool, actor: User, note: str = "") -> Payout:
    """Admin: approve (ledger entry, then a Stripe Connect transfer where configured) or hold."""
    payout = Payout.objects.select_for_update().get(pk=payout.pk)
    if payout.status not in (PayoutStatus.REQUESTED, PayoutStatus.HELD):
        raise ValidationError(f"This payout is already {payout.status}.")
    payout.decided_by = actor
    payout.decided_at = timezone.now()
    payout.note = note[:300]
    if not approve:
        payout.status = PayoutStatus.HELD
        payout.save(update_fields=["status", "decided_by", "decided_at", "note"])
        audit_record(
            tenant=None, actor=actor, action="billing.payout_held", target=str(payout.pk), note=note
        )
        return payout
    earnings = ledger.account_get(AccountKind.CONTRIBUTOR_EARNINGS, contributor=payout.contributor)
    entry, _ = ledger.entry_post(
        key=f"payout:{payout.pk}",
        kind=EntryKind.PAYOUT,
        created_by=actor,
        floors={earnings.pk: 0},
        memo=f"payout to {payout.contributor}",
        lines=[
            Line(earnings, -payout.amount_cents),
            Line(ledger.account_get(AccountKind.PAYOUTS), payout.amount_cents),
        ],
    )
    payout.entry = entry
    if payout.contributor.stripe_account_id:
        from billing.tasks import payout_transfer

        transaction.on_commit(lambda: payout_transfer.delay(str(payout.pk)))
    payout.status = PayoutStatus.APPROVED
    payout.save(update_fields=["status", "decided_by", "decided_at", "note", "entry"])
    audit_record(
        tenant=None,
        actor=actor,
        action="billing.payout_approved",
        target=str(payout.pk),
        amount_cents=payout.amount_cents,
    )
    return payout
