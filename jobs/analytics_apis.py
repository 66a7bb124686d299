"""REST API of federated analytics jobs: create one, list them, read one with its results."""

from __future__ import annotations

import uuid

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from ccgsc_site.api import TenantApi, request_person
from jobs import selectors
from jobs.analytics import STATISTICS
from jobs.analytics.derive import DEFAULT_QUANTILES
from jobs.analytics.spec import MAX_BINS, MAX_COLUMNS, MAX_ROWS
from jobs.analytics_selectors import (
    MAX_RESULTS_SHOWN,
    analytics_query_get,
    analytics_result_list,
)
from jobs.fl_apis import FlJobOutput
from jobs.fl_models import DataSource, DpAccountant
from jobs.services.analytics_creation import (
    ANALYTICS_PARTITIONS,
    DATASET_FEATURES,
    AnalyticsJobSpec,
    analytics_job_create,
)
from tenants.roles import Action
from tenants.tiers import JobKind


class AnalyticsColumnInput(serializers.Serializer):
    name = serializers.RegexField(r"^[A-Za-z0-9_.\-]{1,60}$", max_length=60)
    feature = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=783,
        help_text="The value's index in a row of a public data set (required there); a "
        "contributor's CSV is read by column name instead.",
    )
    lo = serializers.FloatField(help_text="Values below are counted as lo (clipping).")
    hi = serializers.FloatField(help_text="Values above are counted as hi; lo < hi.")
    bins = serializers.IntegerField(default=10, min_value=1, max_value=MAX_BINS)


class AnalyticsJobCreateInput(serializers.Serializer):
    """A federated analytics job: per column, contributors send count, sum, sum of squares and
    a histogram of their values clipped to [lo, hi]; the server learns only the sum."""

    name = serializers.CharField(max_length=120)
    columns = AnalyticsColumnInput(many=True, min_length=1, max_length=MAX_COLUMNS)
    statistics = serializers.ListField(
        child=serializers.ChoiceField(choices=STATISTICS),
        min_length=1,
        default=list(STATISTICS),
        help_text="What the results show; every column's vector carries all of them.",
    )
    quantiles = serializers.ListField(
        child=serializers.FloatField(min_value=0.0, max_value=1.0),
        max_length=20,
        default=list(DEFAULT_QUANTILES),
    )
    max_rows = serializers.IntegerField(
        default=1_000,
        min_value=1,
        max_value=MAX_ROWS,
        help_text="Rows one contributor may use: the differential-privacy sensitivity.",
    )
    data_source = serializers.ChoiceField(choices=DataSource.choices, default="public_partition")
    dataset = serializers.ChoiceField(choices=sorted(DATASET_FEATURES), default="digits")
    partition = serializers.ChoiceField(choices=list(ANALYTICS_PARTITIONS), default="iid")
    shards_per_client = serializers.IntegerField(default=2, min_value=1, max_value=100)
    partition_clients = serializers.IntegerField(default=10, min_value=1, max_value=100_000)
    rounds = serializers.IntegerField(default=1, min_value=1, max_value=1_000)
    cohort_size = serializers.IntegerField(default=10, min_value=1, max_value=1_000_000)
    min_reports = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=1_000_000
    )
    round_deadline_seconds = serializers.IntegerField(default=120, min_value=10, max_value=86_400)
    secure_aggregation = serializers.BooleanField(default=False)
    differential_privacy = serializers.BooleanField(default=False)
    dp_epsilon = serializers.FloatField(
        required=False,
        allow_null=True,
        default=None,
        help_text="The budget ε for all rounds; required with differential privacy.",
    )
    dp_delta = serializers.FloatField(default=1e-5)
    dp_accountant = serializers.ChoiceField(choices=DpAccountant.choices, default="rdp")
    seed = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=2**63 - 1
    )
    start = serializers.BooleanField(default=True)


class AnalyticsQueryOutput(serializers.Serializer):
    columns = serializers.JSONField()
    statistics = serializers.ListField(child=serializers.CharField())
    quantiles = serializers.ListField(child=serializers.FloatField())
    max_rows = serializers.IntegerField()


class AnalyticsResultOutput(serializers.Serializer):
    round = serializers.IntegerField(source="round.number")
    contributors = serializers.IntegerField()
    rows = serializers.IntegerField()
    differentially_private = serializers.BooleanField()
    statistics = serializers.JSONField(
        help_text="Per column: count, sum, mean, variance, std, histogram, edges, quantiles."
    )
    noise_std = serializers.JSONField(
        allow_null=True,
        help_text="DP only: per column the noise σ of [count, Σ t, Σ t², each bin].",
    )
    created_at = serializers.DateTimeField()


class AnalyticsJobOutput(FlJobOutput):
    """An analytics job: its query, its privacy budget and its rounds' results."""

    query = serializers.SerializerMethodField()
    results = serializers.SerializerMethodField()

    @extend_schema_field(AnalyticsQueryOutput(allow_null=True))
    def get_query(self, job) -> dict | None:  # noqa: ANN001
        query = analytics_query_get(tenant=job.tenant, job=job)
        return None if query is None else AnalyticsQueryOutput(query).data

    @extend_schema_field(AnalyticsResultOutput(many=True))
    def get_results(self, job) -> list:  # noqa: ANN001
        results = analytics_result_list(tenant=job.tenant, job=job)[:MAX_RESULTS_SHOWN]
        return AnalyticsResultOutput(results, many=True).data


class AnalyticsJobListApi(TenantApi):
    """List or create federated analytics jobs."""

    actions = {"POST": Action.RUN_JOBS}

    @extend_schema(responses=AnalyticsJobOutput(many=True))
    def get(self, request: Request) -> Response:
        jobs = selectors.job_list(tenant=self.tenant).filter(kind=JobKind.ANALYTICS)
        return self.paginated(jobs, AnalyticsJobOutput)

    @extend_schema(request=AnalyticsJobCreateInput, responses={201: AnalyticsJobOutput})
    def post(self, request: Request) -> Response:
        payload = AnalyticsJobCreateInput(data=request.data)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        start = data.pop("start")
        data["columns"] = [dict(column) for column in data["columns"]]
        job = analytics_job_create(
            tenant=self.tenant,
            actor=request_person(request),
            actor_role=self.role,
            spec=AnalyticsJobSpec(**data),
            start=start,
        )
        return Response(AnalyticsJobOutput(job).data, status=status.HTTP_201_CREATED)


class AnalyticsJobDetailApi(TenantApi):
    """One federated analytics job with its query, budget and results."""

    @extend_schema(responses=AnalyticsJobOutput)
    def get(self, request: Request, job_id: uuid.UUID) -> Response:
        job = selectors.job_get(tenant=self.tenant, job_id=job_id)
        if job.kind != JobKind.ANALYTICS:
            raise NotFound("No such analytics job.")
        return Response(AnalyticsJobOutput(job).data)
