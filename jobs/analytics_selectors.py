"""Reads of federated analytics jobs: their query and the results of their rounds."""

from __future__ import annotations

from django.db.models import QuerySet

from jobs.analytics_models import AnalyticsQuery, AnalyticsResult
from jobs.models import Job
from tenants.models import Tenant

MAX_RESULTS_SHOWN = 100


def analytics_query_get(*, tenant: Tenant, job: Job) -> AnalyticsQuery | None:
    """The query of ``tenant``'s analytics job (None for another kind of job)."""
    return AnalyticsQuery.objects.for_tenant(tenant).filter(job=job).first()


def analytics_result_list(*, tenant: Tenant, job: Job) -> QuerySet[AnalyticsResult]:
    """The job's round results, newest round first."""
    return (
        AnalyticsResult.objects.for_tenant(tenant)
        .filter(job=job)
        .select_related("round")
        .order_by("-round__number")
    )
