"""REST API for jobs, kernels and contributors."""

from __future__ import annotations

import uuid

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from ccgsc_site.api import TenantApi, request_person
from jobs import exports, selectors, services
from jobs.forms import params_shape_error
from jobs.kernel_models import Reducer
from jobs.kernels import kernel_upload
from tenants.roles import Action
from tenants.tiers import JobKind


class KernelOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    version = serializers.CharField()
    sha256 = serializers.CharField()
    size_bytes = serializers.IntegerField()
    reducer = serializers.CharField()
    output_bytes = serializers.IntegerField(allow_null=True)
    description = serializers.CharField()
    params_schema = serializers.JSONField()
    max_range_per_task = serializers.IntegerField()
    builtin = serializers.BooleanField()


class KernelListApi(TenantApi):
    """Kernels this tenant may run; upload your own (multipart, field `module`)."""

    actions = {"POST": Action.RUN_JOBS}

    def get_parsers(self):  # noqa: ANN201 - DRF's signature
        if getattr(self, "request", None) is not None and self.request.method == "POST":
            return [MultiPartParser()]
        return super().get_parsers()

    class KernelUploadInput(serializers.Serializer):
        name = serializers.SlugField(max_length=60)
        version = serializers.CharField(max_length=30)
        reducer = serializers.ChoiceField(choices=Reducer.choices)
        output_bytes = serializers.IntegerField(required=False, min_value=8, max_value=1024 * 1024)
        description = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        max_range_per_task = serializers.IntegerField(required=False, min_value=1, max_value=10**12)
        module = serializers.FileField()

    @extend_schema(responses=KernelOutput(many=True))
    def get(self, request: Request) -> Response:
        return self.paginated(selectors.kernel_list(tenant=self.tenant), KernelOutput)

    @extend_schema(
        request={"multipart/form-data": KernelUploadInput}, responses={201: KernelOutput}
    )
    def post(self, request: Request) -> Response:
        payload = self.KernelUploadInput(data=request.data)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        upload = data.pop("module")
        kernel = kernel_upload(
            tenant=self.tenant,
            actor=request_person(request),
            actor_role=self.role,
            module=upload.read(_module_read_limit()),
            **data,
        )
        return Response(KernelOutput(kernel).data, status=status.HTTP_201_CREATED)


def _module_read_limit() -> int:
    """Read at most one byte past the limit so oversized uploads are refused, not truncated."""
    from ccgsc_worker.abi import MAX_MODULE_BYTES

    return MAX_MODULE_BYTES + 1


class KernelDetailApi(TenantApi):
    """One kernel."""

    @extend_schema(responses=KernelOutput)
    def get(self, request: Request, kernel_id: uuid.UUID) -> Response:
        return Response(
            KernelOutput(selectors.kernel_get(tenant=self.tenant, kernel_id=kernel_id)).data
        )


class FlConfigOutput(serializers.Serializer):
    model_kernel = serializers.CharField()
    model_sizes = serializers.ListField(child=serializers.IntegerField())
    parameter_count = serializers.IntegerField()
    data_source = serializers.CharField()
    dataset = serializers.CharField()
    partition = serializers.CharField()
    dirichlet_alpha = serializers.FloatField(allow_null=True)
    shards_per_client = serializers.IntegerField(allow_null=True)
    partition_clients = serializers.IntegerField(allow_null=True)
    data_is_private = serializers.BooleanField()
    local_data = serializers.JSONField(
        help_text="contributor_local: the schema contributors' data must match ({} otherwise)."
    )
    max_local_samples = serializers.IntegerField(allow_null=True)
    rounds = serializers.IntegerField()
    cohort_size = serializers.IntegerField(allow_null=True)
    cohort_fraction = serializers.FloatField(allow_null=True)
    over_selection = serializers.FloatField()
    min_reports = serializers.IntegerField()
    round_deadline_seconds = serializers.IntegerField()
    target_accuracy = serializers.FloatField(allow_null=True)
    local_epochs = serializers.IntegerField()
    batch_size = serializers.IntegerField()
    learning_rate = serializers.FloatField()
    client_optimizer = serializers.CharField()
    momentum = serializers.FloatField()
    proximal_mu = serializers.FloatField()
    server_strategy = serializers.CharField()
    strategy_options = serializers.DictField(child=serializers.FloatField())
    compression = serializers.CharField()
    topk_fraction = serializers.FloatField(allow_null=True)
    secure_aggregation = serializers.BooleanField()
    differential_privacy = serializers.BooleanField()
    dp_noise_multiplier = serializers.FloatField(allow_null=True)
    dp_clip_norm = serializers.FloatField(allow_null=True)
    dp_epsilon = serializers.FloatField(allow_null=True)
    dp_delta = serializers.FloatField(allow_null=True)
    dp_accountant = serializers.CharField()
    dp_mode = serializers.CharField()
    dp_sampling = serializers.CharField()
    dp_population = serializers.IntegerField(allow_null=True)
    dp_adaptive_clipping = serializers.BooleanField()
    dp_target_quantile = serializers.FloatField(allow_null=True)
    secagg_threshold_fraction = serializers.FloatField(allow_null=True)
    secagg_min_survivors = serializers.IntegerField(allow_null=True)
    cohort_max_anonymous_fraction = serializers.FloatField(allow_null=True)
    mode = serializers.CharField()
    buffer_size = serializers.IntegerField(allow_null=True)
    staleness_bound = serializers.IntegerField(allow_null=True)
    staleness_weighting = serializers.CharField()
    staleness_exponent = serializers.FloatField(allow_null=True)


class JobOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    kind = serializers.CharField()
    kernel = serializers.CharField(source="kernel.name", allow_null=True)
    kernel_id = serializers.UUIDField(allow_null=True)
    params = serializers.JSONField()
    range_start = serializers.IntegerField(allow_null=True)
    range_end = serializers.IntegerField(allow_null=True)
    chunk_size = serializers.IntegerField(allow_null=True)
    fl_config = FlConfigOutput(allow_null=True, help_text="Federated learning jobs only.")
    seed = serializers.IntegerField()
    quorum = serializers.IntegerField()
    max_replicas = serializers.IntegerField()
    adaptive_replication = serializers.BooleanField()
    private_pool = serializers.BooleanField()
    lease_seconds = serializers.IntegerField()
    priority = serializers.IntegerField()
    deadline = serializers.DateTimeField(allow_null=True)
    status = serializers.CharField()
    status_reason = serializers.CharField()
    task_count = serializers.IntegerField()
    tasks_validated = serializers.IntegerField()
    tasks_failed = serializers.IntegerField()
    progress_percent = serializers.IntegerField()
    result = serializers.JSONField(allow_null=True)
    result_sha256 = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)


_FINITE_NUMBER = {"type": "number", "format": "double"}


@extend_schema_field(
    {
        "oneOf": [
            {"type": "object", "additionalProperties": _FINITE_NUMBER, "maxProperties": 4096},
            {"type": "array", "items": _FINITE_NUMBER, "maxItems": 4096},
        ],
        "description": "Named numbers for the kernel's declared parameters, or a list of "
        "numbers for a custom kernel without a schema.",
    }
)
class JobParamsField(serializers.JSONField):
    """A job's parameters: an object of finite numbers, or a list of them."""

    def to_internal_value(self, data):  # noqa: ANN001, ANN201 - DRF's signature
        value = super().to_internal_value(data)
        problem = params_shape_error(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value


class JobCreateInput(serializers.Serializer):
    name = serializers.CharField(max_length=120)
    kernel = serializers.CharField(help_text="Kernel id, or the name of a built-in kernel.")
    params = JobParamsField(required=False, default=dict)
    range_start = serializers.IntegerField(min_value=0, max_value=2**63 - 2)
    range_end = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    chunk_size = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    seed = serializers.IntegerField(required=False, min_value=0, max_value=2**63 - 1)
    quorum = serializers.IntegerField(required=False, default=2, min_value=1, max_value=20)
    max_replicas = serializers.IntegerField(required=False, min_value=1, max_value=20)
    adaptive_replication = serializers.BooleanField(required=False, default=False)
    private_pool = serializers.BooleanField(
        required=False, default=False, help_text="Enterprise: run only on your registered workers."
    )
    lease_seconds = serializers.IntegerField(
        required=False, default=60, min_value=5, max_value=3600
    )
    priority = serializers.IntegerField(required=False, default=0, min_value=-100, max_value=100)
    deadline = serializers.DateTimeField(required=False, allow_null=True)
    start = serializers.BooleanField(required=False, default=True)


class JobListApi(TenantApi):
    """List jobs of both kinds, or create a federated computing job (FL jobs: `fl-jobs/`)."""

    actions = {"POST": Action.RUN_JOBS}

    @extend_schema(responses=JobOutput(many=True))
    def get(self, request: Request) -> Response:
        return self.paginated(selectors.job_list(tenant=self.tenant), JobOutput)

    @extend_schema(request=JobCreateInput, responses={201: JobOutput})
    def post(self, request: Request) -> Response:
        payload = JobCreateInput(data=request.data)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        start = data.pop("start")
        kernel = _kernel_by_ref(self.tenant, data.pop("kernel"))
        job = services.job_create(
            tenant=self.tenant,
            actor=request_person(request),
            actor_role=self.role,
            spec=services.JobSpec(kernel=kernel, **data),
            start=start,
        )
        return Response(JobOutput(job).data, status=status.HTTP_201_CREATED)


def _kernel_by_ref(tenant, ref: str):  # noqa: ANN001, ANN202
    try:
        return selectors.kernel_get(tenant=tenant, kernel_id=uuid.UUID(ref))
    except ValueError:
        kernel = selectors.kernel_list(tenant=tenant).filter(name=ref).first()
        if kernel is None:
            raise serializers.ValidationError({"kernel": f"Unknown kernel {ref!r}."}) from None
        return kernel


class JobDetailApi(TenantApi):
    """One job with its progress and, once completed, its result."""

    @extend_schema(responses=JobOutput)
    def get(self, request: Request, job_id: uuid.UUID) -> Response:
        return Response(JobOutput(selectors.job_get(tenant=self.tenant, job_id=job_id)).data)


class _JobControlApi(TenantApi):
    action_name = ""
    actions = {"POST": Action.RUN_JOBS}

    @extend_schema(request=None, responses=JobOutput)
    def post(self, request: Request, job_id: uuid.UUID) -> Response:
        job = services.job_control(
            tenant=self.tenant, job_id=job_id, role=self.role, action=self.action_name
        )
        return Response(JobOutput(job).data)


class JobStartApi(_JobControlApi):
    """Start a draft job."""

    action_name = "start"


class JobPauseApi(_JobControlApi):
    """Pause a running job (no new replicas are handed out)."""

    action_name = "pause"


class JobResumeApi(_JobControlApi):
    """Resume a paused job."""

    action_name = "resume"


class JobCancelApi(_JobControlApi):
    """Cancel a job."""

    action_name = "cancel"


class TaskOutput(serializers.Serializer):
    index = serializers.IntegerField()
    lo = serializers.IntegerField()
    hi = serializers.IntegerField()
    status = serializers.CharField()
    target_replicas = serializers.IntegerField()
    active_replicas = serializers.IntegerField()
    canonical_sha256 = serializers.CharField()
    validated_at = serializers.DateTimeField(allow_null=True)


class JobTaskListApi(TenantApi):
    """The tasks of a job."""

    @extend_schema(responses=TaskOutput(many=True))
    def get(self, request: Request, job_id: uuid.UUID) -> Response:
        job = selectors.job_get(tenant=self.tenant, job_id=job_id)
        return self.paginated(selectors.task_list(tenant=self.tenant, job=job), TaskOutput)


class JobResultKernelOutput(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.CharField()
    sha256 = serializers.CharField()


class JobResultOutput(serializers.Serializer):
    job = serializers.UUIDField()
    name = serializers.CharField()
    status = serializers.CharField()
    kernel = JobResultKernelOutput()
    range = serializers.ListField(child=serializers.IntegerField(), min_length=2, max_length=2)
    chunk_size = serializers.IntegerField()
    seed = serializers.IntegerField()
    params = serializers.JSONField()
    quorum = serializers.IntegerField()
    tasks = serializers.IntegerField()
    result = serializers.JSONField(allow_null=True, help_text="Null until paid and completed.")
    result_sha256 = serializers.CharField(allow_null=True)
    unpaid_cents = serializers.IntegerField()
    completed_at = serializers.DateTimeField(allow_null=True)


class JobResultApi(TenantApi):
    """A completed job's result as JSON (default) or CSV (`?format=csv`)."""

    @extend_schema(
        parameters=[OpenApiParameter("format", str, enum=["json", "csv"])],
        responses={
            (200, "application/json"): JobResultOutput,
            (200, "text/csv"): OpenApiTypes.STR,
        },
    )
    def get(self, request: Request, job_id: uuid.UUID) -> Response | HttpResponse:
        job = selectors.job_get(tenant=self.tenant, job_id=job_id)
        if job.kind == JobKind.FL:
            raise NotFound("A federated learning job's results are its model versions.")
        if request.query_params.get("format") == "csv":
            return exports.job_result_csv_response(job)
        return Response(exports.job_result_document(job))
