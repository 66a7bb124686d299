"""Reads for billing pages and the leaderboard."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import timedelta
from typing import Any

from django.db.models import QuerySet, Sum
from django.utils import timezone

from billing.models import AccountKind, JournalEntry, Posting, UsageRecord
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
    return list(rows)


def tenant_entries(*, tenant: Tenant) -> QuerySet[JournalEntry]:
    """Ledger entries touching a tenant's accounts."""
    return JournalEntry.objects.filter(tenant=tenant).order_by("-created_at", "-id")


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
