"""REST API of federated learning jobs: creation, rounds and model versions."""

from __future__ import annotations

import uuid

from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from ccgsc_site.api import TenantApi, request_person
from jobs import selectors, services
from jobs.apis import JobOutput
from jobs.fl_exports import (
    ONNX_CONTENT_TYPE,
    model_version_filename,
    model_version_response,
    onnx_response,
)
from jobs.fl_models import (
    ClientOptimizer,
    Compression,
    DataSource,
    DpAccountant,
    DpMode,
    DpSampling,
    FlMode,
    Partition,
    ServerStrategy,
    StalenessWeighting,
    TrainingKernel,
)
from jobs.services.fl_privacy import fl_privacy_state
from tenants.roles import Action
from tenants.tiers import JobKind


class LocalDataSchemaInput(serializers.Serializer):
    """What each contributor's own data must hold (``data_source = contributor_local``): a CSV
    with a header row, numeric features and one label column (named, or by 0-based index), or a
    folder of images with one sub-folder per class, resized to grey width × height pixels."""

    format = serializers.ChoiceField(choices=["csv", "images"])
    features = serializers.IntegerField(
        min_value=1, max_value=4096, help_text="Must equal the model's input size."
    )
    classes = serializers.IntegerField(
        min_value=2, max_value=4096, help_text="Must equal the model's output size."
    )
    label_column = serializers.CharField(
        required=False, max_length=60, help_text="CSV: the label column's header name."
    )
    label_index = serializers.IntegerField(
        required=False, min_value=0, max_value=4096, help_text="CSV: or its 0-based index."
    )
    image_width = serializers.IntegerField(required=False, min_value=1, max_value=64)
    image_height = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=64,
        help_text="Images: width × height must equal the features (grey pixels in [0, 1]).",
    )
    class_names = serializers.ListField(
        child=serializers.CharField(max_length=60),
        required=False,
        min_length=2,
        max_length=4096,
        help_text="Images: the folder names, in label order (label i = class_names[i]).",
    )

    def to_internal_value(self, data: object) -> dict:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(f"Unknown fields: {', '.join(unknown)}.")
        return super().to_internal_value(data)


class FlJobCreateInput(serializers.Serializer):
    """An FL job. Every field but the name has a default: the 2NN of McMahan et al. 2017 sized
    for the digits partition ([64, 200, 200, 10]), 2 label shards per client over 100 clients,
    10 clients a round, FedAvg, E = 1, B = 10."""

    name = serializers.CharField(max_length=120)
    model_kernel = serializers.ChoiceField(choices=TrainingKernel.choices, default="mlp")
    model_sizes = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=4096),
        min_length=2,
        max_length=8,
        default=[64, 200, 200, 10],
        help_text="Layer sizes: [inputs, hidden..., classes]; the CNN takes [784, 10].",
    )
    data_source = serializers.ChoiceField(choices=DataSource.choices, default="public_partition")
    dataset = serializers.ChoiceField(
        choices=["digits", "mnist10k"],
        default="digits",
        allow_blank=True,
        help_text="The public data set of a public partition (ignored for local data).",
    )
    partition = serializers.ChoiceField(choices=Partition.choices, default="shards")
    dirichlet_alpha = serializers.FloatField(required=False, allow_null=True, default=None)
    shards_per_client = serializers.IntegerField(
        required=False, allow_null=True, default=2, min_value=1, max_value=1000
    )
    partition_clients = serializers.IntegerField(
        required=False, allow_null=True, default=100, min_value=1, max_value=1_000_000
    )
    local_data = LocalDataSchemaInput(
        required=False,
        allow_null=True,
        default=None,
        help_text="Required with contributor_local data: the schema contributors must match.",
    )
    max_local_samples = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=1,
        max_value=1_000_000,
        help_text="contributor_local: the most samples one update may declare (default 10,000).",
    )
    rounds = serializers.IntegerField(default=50, min_value=1, max_value=10_000)
    cohort_size = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=1_000_000
    )
    cohort_fraction = serializers.FloatField(required=False, allow_null=True)
    over_selection = serializers.FloatField(default=1.0)
    min_reports = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=1_000_000
    )
    round_deadline_seconds = serializers.IntegerField(default=120, min_value=10, max_value=86_400)
    target_accuracy = serializers.FloatField(required=False, allow_null=True, default=None)
    local_epochs = serializers.IntegerField(default=1, min_value=1, max_value=100)
    batch_size = serializers.IntegerField(default=10, min_value=1, max_value=65_536)
    learning_rate = serializers.FloatField(default=0.05)
    client_optimizer = serializers.ChoiceField(choices=ClientOptimizer.choices, default="sgd")
    momentum = serializers.FloatField(default=0.0)
    proximal_mu = serializers.FloatField(default=0.0, help_text="FedProx's μ; 0 is off.")
    server_strategy = serializers.ChoiceField(choices=ServerStrategy.choices, default="fedavg")
    strategy_options = serializers.DictField(
        child=serializers.FloatField(), default=dict, help_text="See docs/federated-learning.md."
    )
    compression = serializers.ChoiceField(choices=Compression.choices, default="none")
    topk_fraction = serializers.FloatField(required=False, allow_null=True, default=None)
    secure_aggregation = serializers.BooleanField(default=False)
    differential_privacy = serializers.BooleanField(default=False)
    dp_noise_multiplier = serializers.FloatField(required=False, allow_null=True, default=None)
    dp_clip_norm = serializers.FloatField(required=False, allow_null=True, default=None)
    dp_epsilon = serializers.FloatField(
        required=False,
        allow_null=True,
        default=None,
        help_text="The budget ε; required with differential privacy. Rounds past it are refused.",
    )
    dp_delta = serializers.FloatField(
        default=1e-5, help_text="δ: below 1e-3, and below 1/dp_population when one is stated."
    )
    dp_accountant = serializers.ChoiceField(choices=DpAccountant.choices, default="rdp")
    dp_mode = serializers.ChoiceField(
        choices=DpMode.choices,
        default="central",
        help_text="distributed: each client adds a noise share; needs secure aggregation.",
    )
    dp_sampling = serializers.ChoiceField(
        choices=DpSampling.choices,
        default="volunteer",
        help_text="volunteer: accounted at q = 1 (volunteers are not a random sample of a known "
        "population); enrolled: Poisson sampling at q = invited cohort / dp_population.",
    )
    dp_population = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=1_000_000_000
    )
    dp_adaptive_clipping = serializers.BooleanField(default=False)
    dp_target_quantile = serializers.FloatField(
        default=0.5, help_text="Adaptive clipping: the quantile γ of update norms C tracks."
    )
    secagg_threshold_fraction = serializers.FloatField(
        default=0.5, help_text="t/k in [0.5, 1): t = floor(fraction·k) + 1 of k neighbours."
    )
    secagg_min_survivors = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=3,
        max_value=1_000_000,
        help_text="Fewer masked inputs abort the round; default the minimum reports (at least 3).",
    )
    cohort_max_anonymous_fraction = serializers.FloatField(
        required=False,
        allow_null=True,
        default=None,
        min_value=0.0,
        max_value=1.0,
        help_text="With secure aggregation or DP: at most this fraction of each cohort without an "
        "account (default 0.25; the tier bounds it: FL Core 0.25, FL Enterprise 0.5).",
    )
    mode = serializers.ChoiceField(choices=FlMode.choices, default="sync")
    buffer_size = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=1_000_000
    )
    staleness_bound = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=0, max_value=1000
    )
    staleness_weighting = serializers.ChoiceField(
        choices=[("", "—"), *StalenessWeighting.choices], default="", allow_blank=True
    )
    staleness_exponent = serializers.FloatField(required=False, allow_null=True, default=None)
    seed = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=2**63 - 1
    )
    start = serializers.BooleanField(default=True)

    def validate(self, attrs: dict) -> dict:
        if attrs.get("cohort_size") is None and attrs.get("cohort_fraction") is None:
            attrs["cohort_size"] = 10
        return attrs


class PrivacyRoundOutput(serializers.Serializer):
    number = serializers.IntegerField()
    status = serializers.CharField()
    epsilon_spent = serializers.FloatField(
        allow_null=True, help_text="The job's cumulative ε after this round (null until recorded)."
    )


class PrivacyOutput(serializers.Serializer):
    """A differentially private job's budget and what it has spent."""

    epsilon_budget = serializers.FloatField()
    delta = serializers.FloatField()
    accountant = serializers.CharField()
    mode = serializers.CharField()
    mechanism = serializers.CharField(
        help_text="gaussian: the server adds Gaussian noise to the sum (central); skellam: each "
        "client adds a Skellam share before masking, the server adds none (distributed)."
    )
    sampling = serializers.CharField()
    sampling_probability = serializers.FloatField(help_text="q: 1 for a volunteer cohort.")
    population = serializers.IntegerField(allow_null=True)
    adaptive_clipping = serializers.BooleanField()
    target_quantile = serializers.FloatField(allow_null=True)
    rounds_planned = serializers.IntegerField()
    rounds_allowed = serializers.IntegerField(
        help_text="Rounds the budget allows in all, at most the planned rounds."
    )
    rounds_spending = serializers.IntegerField(help_text="Rounds opened that did not fail.")
    epsilon_spent = serializers.FloatField()
    rounds_left_in_budget = serializers.IntegerField()
    rounds = PrivacyRoundOutput(many=True, help_text="The last 100 rounds, oldest first.")


class FlJobOutput(JobOutput):
    """An FL job with its privacy budget (null without differential privacy)."""

    privacy = serializers.SerializerMethodField()

    @extend_schema_field(PrivacyOutput(allow_null=True))
    def get_privacy(self, job) -> dict | None:  # noqa: ANN001
        state = fl_privacy_state(job=job)
        return None if state is None else PrivacyOutput(state).data


class FlJobListApi(TenantApi):
    """List or create federated learning jobs."""

    actions = {"POST": Action.RUN_JOBS}

    @extend_schema(responses=FlJobOutput(many=True))
    def get(self, request: Request) -> Response:
        jobs = selectors.job_list(tenant=self.tenant).filter(kind=JobKind.FL)
        return self.paginated(jobs, FlJobOutput)

    @extend_schema(request=FlJobCreateInput, responses={201: FlJobOutput})
    def post(self, request: Request) -> Response:
        payload = FlJobCreateInput(data=request.data)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        start = data.pop("start")
        job = services.fl_job_create(
            tenant=self.tenant,
            actor=request_person(request),
            actor_role=self.role,
            spec=services.FlJobSpec(**data),
            start=start,
        )
        return Response(FlJobOutput(job).data, status=status.HTTP_201_CREATED)


class FlJobDetailApi(TenantApi):
    """One federated learning job with its privacy budget, ε spent and rounds left."""

    @extend_schema(responses=FlJobOutput)
    def get(self, request: Request, job_id: uuid.UUID) -> Response:
        job = selectors.job_get(tenant=self.tenant, job_id=job_id)
        if job.kind != JobKind.FL:
            raise NotFound("No such federated learning job.")
        return Response(FlJobOutput(job).data)


class RoundOutput(serializers.Serializer):
    number = serializers.IntegerField()
    status = serializers.CharField()
    deadline = serializers.DateTimeField(allow_null=True)
    cohort_size = serializers.IntegerField()
    reports = serializers.IntegerField()
    dropouts = serializers.IntegerField()
    stragglers = serializers.IntegerField()
    replacements = serializers.IntegerField(
        help_text=(
            "Invitees that declined or dropped out and whose place went to another eligible "
            "worker while the round was open (at most the cohort invited)."
        )
    )
    metrics = serializers.JSONField(
        help_text=(
            "What the round's close measured: train_loss, train_accuracy, participants, invited, "
            "dropouts, replacements, samples, base_version, version, duration_seconds, "
            "client_accuracy_std, staleness_mean (async), rejected and rejections (count per "
            "rejection code); "
            "eval_loss, eval_accuracy and eval_samples once the server has evaluated the "
            "version on the held-out set (public partitions); a failed round: reports, "
            "dropouts, replacements, reason (deadline or job_completed)."
        )
    )
    bytes_up = serializers.IntegerField()
    bytes_down = serializers.IntegerField()
    started_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(allow_null=True)


class JobRoundListApi(TenantApi):
    """The rounds of a federated learning job, newest first."""

    @extend_schema(responses=RoundOutput(many=True))
    def get(self, request: Request, job_id: uuid.UUID) -> Response:
        job = selectors.job_get(tenant=self.tenant, job_id=job_id)
        return self.paginated(selectors.fl_round_list(tenant=self.tenant, job=job), RoundOutput)


class ModelVersionOutput(serializers.Serializer):
    id = serializers.UUIDField()
    version = serializers.IntegerField()
    sha256 = serializers.CharField()
    size_bytes = serializers.IntegerField()
    round = serializers.IntegerField(source="round.number", allow_null=True)
    metrics = serializers.JSONField()
    created_at = serializers.DateTimeField()
    download_url = serializers.SerializerMethodField()

    def get_download_url(self, version) -> str:  # noqa: ANN001
        return reverse("api_model_version_download", kwargs={"model_version_id": version.pk})


class JobModelVersionListApi(TenantApi):
    """The global model versions of a federated learning job, newest first."""

    @extend_schema(responses=ModelVersionOutput(many=True))
    def get(self, request: Request, job_id: uuid.UUID) -> Response:
        job = selectors.job_get(tenant=self.tenant, job_id=job_id)
        versions = selectors.model_version_list(tenant=self.tenant, job=job).select_related("round")
        return self.paginated(versions, ModelVersionOutput)


class ModelVersionDownloadApi(TenantApi):
    """A model version's weights: raw little-endian float32 in the kernel's parameter layout.
    The ETag is the SHA-256 of the bytes."""

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request: Request, model_version_id: uuid.UUID) -> HttpResponse:
        version = selectors.model_version_get(tenant=self.tenant, model_version_id=model_version_id)
        return model_version_response(request, version, filename=model_version_filename(version))


class ModelVersionOnnxApi(TenantApi):
    """A model version as an ONNX model (opset 17), for serving it outside the platform."""

    @extend_schema(responses={(200, ONNX_CONTENT_TYPE): OpenApiTypes.BINARY})
    def get(self, request: Request, model_version_id: uuid.UUID) -> HttpResponse:
        version = selectors.model_version_get(tenant=self.tenant, model_version_id=model_version_id)
        return onnx_response(version)
