"""Federated analytics: the query an analytics job asks each round, and what each round learned.

An analytics job (``Job.kind="analytics"``) runs on the FL round machinery: its ``FlConfig``
holds the rounds, cohort, deadline, secure-aggregation and DP settings (``model_kernel`` is
``"analytics"`` and ``parameter_count`` is the summary vector's length d), and the query itself
lives here. Imported at the end of ``jobs.models`` so Django registers these models.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from jobs.fl_models import Round
from jobs.models import Job
from tenants.models import Tenant
from tenants.scoping import TenantOwnedModel

ANALYTICS_KERNEL = "analytics"


class AnalyticsQuery(TenantOwnedModel):
    """What each contributor summarises: columns with bounds and bins, the statistics shown,
    the quantiles interpolated, and the most rows one contributor may use (the sensitivity)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="analytics_query")
    # [{"name", "feature", "lo", "hi", "bins"}] in vector order (jobs.analytics.spec).
    columns = models.JSONField()
    statistics = models.JSONField(default=list)
    quantiles = models.JSONField(default=list)
    max_rows = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(max_rows__gte=1), name="analyticsquery_max_rows"),
        ]

    def __str__(self) -> str:
        return f"query of {self.job_id}"


class AnalyticsResult(TenantOwnedModel):
    """One closed round's aggregate: the summed (and, with DP, noised) vector and the
    statistics derived from it; with DP also the noise σ per column block."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="analytics_results")
    round = models.OneToOneField(Round, on_delete=models.CASCADE, related_name="analytics_result")
    contributors = models.PositiveIntegerField()
    rows = models.PositiveBigIntegerField()
    aggregate = models.JSONField()  # f64[d] as a list
    statistics = models.JSONField()  # [ColumnStatistics.as_dict()]
    differentially_private = models.BooleanField(default=False)
    # Per column [σ count, σ Σ t, σ Σ t², σ of each bin] (DP only).
    noise_std = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "-round"]
        indexes = [models.Index(fields=["tenant", "job"], name="analyticsresult_tenant_job")]

    def __str__(self) -> str:
        return f"result of {self.round}"


__all__ = ["ANALYTICS_KERNEL", "AnalyticsQuery", "AnalyticsResult"]
