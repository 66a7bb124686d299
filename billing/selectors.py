"""Reads for billing pages and the leaderboard."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import timedelta
from typing import Any

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from billing.models import (
    STRIPE_EVENT_ATTENTION,
    AccountKind,
    Checkout,
    CheckoutStatus,
    JournalEntry,
    Posting,
    StripeEvent,
    UsageKind,
    UsageRecord,
)
from tenants.models import Tenant

RAC_HALF_LIFE = timedelta(days=7)
RAC_WINDOW = timedelta(days=60)


def usage_list(*, tenant: Tenant) -> QuerySet[UsageRecord]:
    """A tenant's usage records, newest first."""
    return (
        UsageRecord.objects.for_tenant(tenant).select_related("job").order_by("-created_at", "-id")
    )


def usage_by_job(*, tenant: Tenant) -> list[dict[str, Any]]:
    """Usage and cost per job (and per round for FL)."""
    rows = (
        UsageRecord.objects.for_tenant(tenant)
        .values("job_id", "job__name", "kind", "round_number", "status")
        .annotate(quantity=Sum("quantity"), amount_cents=Sum("amount_cents"))
        .order_by("job__name", "round_number", "kind", "status")
    )
    return [{**row, "kind_label": UsageKind(row["kind"]).label} for row in rows]


# The tenant's own accounts: an entry matters to the tenant when it moves one of them.
TENANT_ACCOUNTS = (AccountKind.TENANT_BALANCE, AccountKind.TENANT_RECEIVABLE)


def tenant_entries(*, tenant: Tenant) -> QuerySet[JournalEntry]:
    """Ledger entries moving the tenant's own accounts, each with ``amount_cents``: what it did
    to them (contributor shares move platform revenue, and are not the tenant's)."""
    mine = Q(
        postings__account__tenant=tenant,
        postings__account__kind__in=TENANT_ACCOUNTS,
    )
    return (
        JournalEntry.objects.filter(mine)
        .annotate(amount_cents=Sum("postings__amount_cents", filter=mine))
        .order_by("-created_at", "-id")
    )


def checkouts_needing_attention(*, tenant: Tenant) -> QuerySet[Checkout]:
    """The tenant's top-ups still processing, failed or flagged, newest first."""
    return (
        Checkout.objects.for_tenant(tenant)
        .filter(status__in=[CheckoutStatus.PENDING, CheckoutStatus.FAILED, CheckoutStatus.FLAGGED])
        .order_by("-created_at", "-id")
    )


def stripe_events_attention_count_unscoped() -> int:
    """How many Stripe events were flagged or failed (for staff, across tenants)."""
    return StripeEvent.objects.filter(status__in=STRIPE_EVENT_ATTENTION).count()


def leaderboard(*, limit: int = 20) -> dict[str, list[dict[str, Any]]]:
    """Contributors by recent average credit (half-life 7 days) and by all-time credit; teams."""
    now = timezone.now()
    credit_postings = Posting.objects.filter(
        account__kind=AccountKind.CONTRIBUTOR_CREDITS, account__contributor__is_banned=False
    )
    all_time = (
        credit_postings.values(
            "account__contributor_id",
            "account__contributor__display_name",
            "account__contributor__team",
            "account__contributor__user__email",
        )
        .annotate(total=Sum("amount_cents"))
        .filter(total__gt=0)
        .order_by("-total")
    )
    recent: dict[Any, float] = defaultdict(float)
    decay = math.log(2) / RAC_HALF_LIFE.total_seconds()
    for contributor_id, amount, at in credit_postings.filter(
        entry__created_at__gte=now - RAC_WINDOW
    ).values_list("account__contributor_id", "amount_cents", "entry__created_at"):
        recent[contributor_id] += amount * math.exp(-decay * (now - at).total_seconds())
    names: dict[Any, str] = {}
    teams: dict[str, int] = defaultdict(int)
    rows = []
    for row in all_time:
        cid = row["account__contributor_id"]
        email = row["account__contributor__user__email"]
        names[cid] = row["account__contributor__display_name"] or (
            email.split("@")[0] if email else f"anonymous-{str(cid)[:8]}"
        )
        rows.append(
            {
                "contributor": names[cid],
                "total": row["total"],
                "recent": round(recent.get(cid, 0.0), 1),
            }
        )
        if row["account__contributor__team"]:
            teams[row["account__contributor__team"]] += row["total"]
    return {
        "all_time": rows[:limit],
        "recent": sorted(rows, key=lambda r: -r["recent"])[:limit],
        "teams": [{"team": t, "total": v} for t, v in sorted(teams.items(), key=lambda kv: -kv[1])][
            :limit
        ],
    }
