"""Ledger, usage, Stripe events, payouts.

The ledger is double-entry and append-only: an entry's postings sum to zero per currency, every
entry has a unique idempotency key, and corrections are reversing entries. Account balances are
cached for locking and reads; reconciliation proves them equal to the postings.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from billing.money import CREDIT, CURRENCY
from tenants.models import Tenant
from tenants.scoping import TenantOwnedModel


class AccountKind(models.TextChoices):
    TENANT_BALANCE = "tenant_balance", "Tenant prepaid balance"
    TENANT_RECEIVABLE = "tenant_receivable", "Tenant invoiced usage"
    CONTRIBUTOR_EARNINGS = "contributor_earnings", "Contributor earnings"
    CONTRIBUTOR_CREDITS = "contributor_credits", "Contributor credits (points)"
    PLATFORM_REVENUE = "platform_revenue", "Platform revenue"
    STRIPE_CLEARING = "stripe_clearing", "Stripe clearing"
    PROMOTIONS = "promotions", "Promotions"
    CREDIT_ISSUANCE = "credit_issuance", "Credit issuance"
    PAYOUTS = "payouts", "Payouts sent"


class Account(models.Model):
    """One ledger account. Tenant accounts have a tenant; contributor accounts a contributor."""

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=30, choices=AccountKind.choices)
    currency = models.CharField(max_length=10, default=CURRENCY)
    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, null=True, blank=True, related_name="accounts"
    )
    contributor = models.ForeignKey(
        "jobs.Contributor", on_delete=models.PROTECT, null=True, blank=True, related_name="accounts"
    )
    balance_cents = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["kind", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "currency"],
                condition=Q(tenant__isnull=True, contributor__isnull=True),
                name="account_platform_unique",
            ),
            models.UniqueConstraint(
                fields=["kind", "currency", "tenant"],
                condition=Q(tenant__isnull=False),
                name="account_tenant_unique",
            ),
            models.UniqueConstraint(
                fields=["kind", "currency", "contributor"],
                condition=Q(contributor__isnull=False),
                name="account_contributor_unique",
            ),
            models.CheckConstraint(
                condition=Q(currency__in=[CURRENCY, CREDIT]), name="account_currency_known"
            ),
        ]

    def __str__(self) -> str:
        owner = self.tenant or self.contributor or "platform"
        return f"{self.get_kind_display()} ({owner}, {self.currency})"


class EntryKind(models.TextChoices):
    TOPUP = "topup", "Top-up"
    CHARGE = "charge", "Usage charge"
    CONTRIBUTOR_SHARE = "contributor_share", "Contributor share of a charge"
    REFUND = "refund", "Refund"
    PROMOTION = "promotion", "Promotional credit"
    ADJUSTMENT = "adjustment", "Adjustment"
    CREDIT_AWARD = "credit_award", "Contributor credit"
    CREDIT_REVOKE = "credit_revoke", "Contributor credit revoked"
    PAYOUT = "payout", "Payout"
    INVOICE_PAYMENT = "invoice_payment", "Invoice paid"
    REVERSAL = "reversal", "Reversal"


class JournalEntry(models.Model):
    """A balanced, immutable set of postings, written once under its idempotency key."""

    id = models.BigAutoField(primary_key=True)
    idempotency_key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=20, choices=EntryKind.choices)
    memo = models.CharField(max_length=300, blank=True)
    external_ref = models.CharField(
        max_length=200,
        blank=True,
        help_text="Stripe object behind the entry (payment intent, refund...).",
    )
    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    parent = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="children",
        help_text="The entry this one follows from (a refund's top-up).",
    )
    reverses = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="reversed_by"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "journal entries"

    def __str__(self) -> str:
        return f"{self.kind} {self.idempotency_key}"


class Posting(models.Model):
    """One line of an entry: a signed amount on one account (positive increases the balance)."""

    id = models.BigAutoField(primary_key=True)
    entry = models.ForeignKey(JournalEntry, on_delete=models.PROTECT, related_name="postings")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="postings")
    amount_cents = models.BigIntegerField()
    currency = models.CharField(max_length=10)

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=~Q(amount_cents=0), name="posting_nonzero")]

    def __str__(self) -> str:
        return f"{self.amount_cents:+} {self.currency} → {self.account}"


class UsageKind(models.TextChoices):
    FC_WORK_UNITS = "fc_work_units", "Validated FC work units"
    FL_ROUND = "fl_round", "Completed FL round"
    BYTES_UP = "bytes_up", "Bytes uploaded"
    BYTES_DOWN = "bytes_down", "Bytes downloaded"
    COMPUTE_SECONDS = "compute_seconds", "Compute seconds"


class UsageStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    CHARGED = "charged", "Charged"
    FREE = "free", "Free tier"
    INVOICED = "invoiced", "Invoiced"
    UNPAID = "unpaid", "Waiting for balance"


class UsageRecord(TenantOwnedModel):
    """One metered event (a validated task, a completed round...), charged exactly once."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_records")
    job = models.ForeignKey(
        "jobs.Job", on_delete=models.PROTECT, null=True, blank=True, related_name="usage"
    )
    # What the record meters: an FC task, or an FL round (job + round number; a Round model
    # will replace the pair).
    task = models.ForeignKey(
        "jobs.Task",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="usage_records",
    )
    round_number = models.PositiveIntegerField(null=True, blank=True)
    kind = models.CharField(max_length=20, choices=UsageKind.choices)
    quantity = models.BigIntegerField()
    amount_cents = models.BigIntegerField(default=0)
    idempotency_key = models.CharField(max_length=200, unique=True)
    status = models.CharField(
        max_length=20, choices=UsageStatus.choices, default=UsageStatus.PENDING
    )
    entry = models.OneToOneField(
        JournalEntry, on_delete=models.PROTECT, null=True, blank=True, related_name="usage"
    )
    reported_to_stripe_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "status"]), models.Index(fields=["job", "kind"])]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gte=0), name="usage_nonnegative"),
            models.UniqueConstraint(
                fields=["task"], condition=Q(task__isnull=False), name="usage_one_per_task"
            ),
            models.UniqueConstraint(
                fields=["job", "round_number"],
                condition=Q(round_number__isnull=False),
                name="usage_one_per_round",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.quantity} ({self.status})"


class StripeEventStatus(models.TextChoices):
    RECEIVED = "received", "Received"
    PROCESSED = "processed", "Processed"
    IGNORED = "ignored", "Ignored (not ours to handle)"
    FLAGGED = "flagged", "Flagged: needs a person"
    FAILED = "failed", "Failed"


# Events in these states were answered 2xx but did not do what they should: admins look at them.
STRIPE_EVENT_ATTENTION = (StripeEventStatus.FLAGGED, StripeEventStatus.FAILED)


class StripeEvent(models.Model):
    """A webhook event, stored once (the unique id makes redelivery a no-op)."""

    id = models.BigAutoField(primary_key=True)
    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    status = models.CharField(
        max_length=20, choices=StripeEventStatus.choices, default=StripeEventStatus.RECEIVED
    )
    outcome = models.CharField(max_length=30, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class CheckoutStatus(models.TextChoices):
    OPEN = "open", "Waiting for payment"
    PENDING = "pending", "Payment processing"
    PAID = "paid", "Paid and credited"
    FAILED = "failed", "Payment failed"
    FLAGGED = "flagged", "Did not match what we priced"


class Checkout(TenantOwnedModel):
    """A top-up checkout we created: only these are ever credited, and only as priced."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="checkouts")
    session_id = models.CharField(max_length=200, unique=True)
    amount_cents = models.BigIntegerField()
    currency = models.CharField(max_length=10, default=CURRENCY)
    status = models.CharField(
        max_length=20, choices=CheckoutStatus.choices, default=CheckoutStatus.OPEN
    )
    test_mode = models.BooleanField(default=False)
    payment_intent = models.CharField(max_length=200, blank=True)
    problem = models.CharField(max_length=300, blank=True)
    entry = models.OneToOneField(
        JournalEntry, on_delete=models.PROTECT, null=True, blank=True, related_name="checkout"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "status"])]
        constraints = [
            models.CheckConstraint(condition=Q(amount_cents__gt=0), name="checkout_positive")
        ]

    def __str__(self) -> str:
        return f"checkout {self.session_id} ({self.status})"


class BillingProfile(TenantOwnedModel):
    """A tenant's Stripe identity and contract fields."""

    tenant = models.OneToOneField(
        Tenant, on_delete=models.CASCADE, primary_key=True, related_name="billing"
    )
    stripe_customer_id = models.CharField(max_length=100, blank=True)
    stripe_subscription_id = models.CharField(max_length=100, blank=True)
    sla_uptime_percent = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True)
    sla_support_hours = models.PositiveIntegerField(null=True, blank=True)
    contract_reference = models.CharField(max_length=100, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"billing of {self.tenant}"


class PayoutStatus(models.TextChoices):
    REQUESTED = "requested", "Requested"
    HELD = "held", "Held"
    APPROVED = "approved", "Approved and paid"
    REJECTED = "rejected", "Rejected"


class Payout(models.Model):
    """A contributor's request to be paid their earnings; an admin approves or holds it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    contributor = models.ForeignKey(
        "jobs.Contributor", on_delete=models.PROTECT, related_name="payouts"
    )
    amount_cents = models.BigIntegerField()
    status = models.CharField(
        max_length=20, choices=PayoutStatus.choices, default=PayoutStatus.REQUESTED
    )
    entry = models.OneToOneField(
        JournalEntry, on_delete=models.PROTECT, null=True, blank=True, related_name="payout"
    )
    stripe_transfer_id = models.CharField(max_length=100, blank=True)
    note = models.CharField(max_length=300, blank=True)
    requested_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-requested_at"]
        constraints = [
            models.CheckConstraint(condition=Q(amount_cents__gt=0), name="payout_positive"),
            # One open request per contributor at a time.
            models.UniqueConstraint(
                fields=["contributor"],
                condition=Q(status__in=["requested", "held"]),
                name="payout_one_open_per_contributor",
            ),
        ]

    def __str__(self) -> str:
        return f"payout {self.amount_cents} to {self.contributor} ({self.status})"
