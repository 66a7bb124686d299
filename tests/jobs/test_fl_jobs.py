"""Federated learning jobs: validation, tier gates, admission, the API and pages, the model
registry on the filesystem, and isolation between tenants."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from billing import metering as billing_metering
from billing.operations import balance_adjust
from jobs import dispatch, services
from jobs.fl_models import FlConfig
from jobs.models import Job, JobEvent, JobStatus, ModelVersion
from jobs.services import FlJobSpec, fl_job_create
from jobs.services.fl_admission import fl_round_bytes_estimate
from jobs.services.fl_init import initial_weights, parameter_count
from jobs.services.model_registry import model_storage_key, model_version_read
from tenants.roles import Role
from tenants.tiers import POLICIES, Tier
from tests.factories import ContributorFactory
from tests.jobs.fl_helpers import fl_job, fl_job_unchecked

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }


@pytest.fixture
def enterprise(tenant):
    tenant.tier = Tier.ENTERPRISE
    tenant.save(update_fields=["tier"])
    return tenant


@pytest.fixture
def core(tenant, owner):
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=500, actor=owner, reason="tests", promotional=True)
    return tenant


def _errors(excinfo: pytest.ExceptionInfo) -> dict[str, list[str]]:
    return excinfo.value.message_dict


# ----------------------------------------------------------------------------- creation


def test_defaults_create_a_running_2nn_job_with_version_zero_in_storage(core, settings, tmp_path):
    job = fl_job_create(tenant=core, actor=None, actor_role=Role.OWNER, spec=FlJobSpec(name="demo"))

    config = job.fl_config
    assert (job.kind, job.status) == ("fl", JobStatus.RUNNING)
    assert job.kernel_id is None
    assert job.range_start is None
    assert job.chunk_size is None
    assert (config.model_kernel, config.model_sizes) == ("mlp", [64, 200, 200, 10])
    assert config.parameter_count == 64 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
    assert (config.dataset, config.partition, config.shards_per_client) == ("digits", "shards", 2)
    assert config.data_is_private is False
    assert (config.server_strategy, config.local_epochs, config.batch_size) == ("fedavg", 1, 10)
    assert config.min_reports == 10
    version = ModelVersion.objects.for_tenant(core).get(job=job)
    expected = initial_weights("mlp", [64, 200, 200, 10], job.seed)
    data = (tmp_path / "media" / version.storage_key).read_bytes()
    assert version.version == 0
    assert (
        version.sha256
        == hashlib.sha256(data).hexdigest()
        == hashlib.sha256(expected.tobytes()).hexdigest()
    )
    assert version.storage_key == model_storage_key(
        tenant_id=core.pk, job_id=job.pk, sha256=version.sha256
    )
    assert version.size_bytes == 4 * config.parameter_count
    np.testing.assert_array_equal(model_version_read(model_version=version), expected)
    kinds = list(JobEvent.objects.for_tenant(core).filter(job=job).values_list("kind", flat=True))
    assert sorted(kinds) == ["created", "started"]


def test_the_initial_model_is_deterministic_in_the_seed(enterprise):
    first = fl_job(enterprise, seed=42)
    second = fl_job(enterprise, seed=42)
    third = fl_job(enterprise, seed=43)

    sha = {j.pk: j.model_versions.get().sha256 for j in (first, second, third)}
    assert sha[first.pk] == sha[second.pk] != sha[third.pk]


def test_parameter_counts_match_the_kernel_manifest():
    assert parameter_count("mlp", [784, 200, 200, 10]) == 199_210
    assert parameter_count("logreg", [64, 10]) == 650
    assert parameter_count("cnn", [784, 10]) == 1_663_370
    assert initial_weights("cnn", [784, 10], 1).shape == (1_663_370,)


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"name": "  "}, "name", "name"),
        ({"model_kernel": "rnn"}, "model_kernel", "Choose one of"),
        ({"model_sizes": [64, 10, 10]}, "model_sizes", "exactly [inputs, classes]"),
        ({"model_kernel": "cnn", "model_sizes": [64, 10]}, "model_sizes", "fixed"),
        ({"model_sizes": [784, 10]}, "model_sizes", "digits has 64 features"),
        ({"dataset": "cifar"}, "dataset", "digits, mnist10k"),
        ({"partition": "dirichlet"}, "dirichlet_alpha", "α"),
        ({"shards_per_client": 11}, "shards_per_client", "1 to 10"),
        ({"partition_clients": 5000}, "partition_clients", "1 to 1797"),
        ({"rounds": 0}, "rounds", "1 to 10000"),
        ({"cohort_fraction": 0.1}, "cohort_size", "not both"),
        ({"cohort_size": None, "cohort_fraction": 1.5}, "cohort_fraction", "(0, 1]"),
        ({"over_selection": 0.5}, "over_selection", "1.0"),
        ({"min_reports": 11}, "min_reports", "cohort (10)"),
        ({"round_deadline_seconds": 1}, "round_deadline_seconds", "10 to"),
        ({"target_accuracy": 97}, "target_accuracy", "(0, 1]"),
        ({"local_epochs": 0}, "local_epochs", "E"),
        ({"batch_size": 0}, "batch_size", "B"),
        ({"learning_rate": float("nan")}, "learning_rate", "(0, 10]"),
        ({"momentum": 0.9}, "momentum", "Plain SGD"),
        ({"client_optimizer": "momentum"}, "momentum", "(0, 1)"),
        ({"proximal_mu": -1}, "proximal_mu", "μ"),
        ({"server_strategy": "fedsgd"}, "server_strategy", "Choose one of"),
        ({"strategy_options": {"server_momentum": 0.9}}, "strategy_options", "Unknown options"),
        (
            {"server_strategy": "fedavgm", "strategy_options": {"server_momentum": 2}},
            "strategy_options",
            "server_momentum must be a number from 0 to 0.999",
        ),
        ({"compression": "topk"}, "topk_fraction", "(0, 1)"),
        ({"compression": "signsgd", "server_strategy": "fedadam"}, "compression", "majority"),
        ({"compression": "int8", "server_strategy": "scaffold"}, "compression", "not built"),
        (
            {"compression": "topk", "topk_fraction": 0.1, "server_strategy": "median"},
            "compression",
            "median",
        ),
        (
            {"compression": "signsgd", "mode": "async", "buffer_size": 5, "staleness_bound": 2},
            "compression",
            "sync rounds only",
        ),
        ({"compression": "int8", "secure_aggregation": True}, "secure_aggregation", "not built"),
        (
            {"compression": "signsgd", "strategy_options": {"server_learning_rate": 5}},
            "strategy_options",
            "server_learning_rate must be a number from 1e-06 to 1",
        ),
        ({"mode": "async"}, "buffer_size", "1 to 10"),
        ({"seed": -1}, "seed", "2^63"),
    ],
)
def test_invalid_fields_are_refused_by_name_and_nothing_is_written(
    enterprise, fields, field, fragment
):
    with pytest.raises(ValidationError) as excinfo:
        fl_job(enterprise, **fields)

    errors = _errors(excinfo)
    assert field in errors, errors
    assert fragment in " ".join(errors[field])
    assert not Job.objects.for_tenant(enterprise).exists()
    assert not FlConfig.objects.for_tenant(enterprise).exists()


def test_contributor_local_data_is_private_and_needs_a_cohort_count(enterprise):
    schema = {"format": "csv", "features": 20, "classes": 3, "label_column": "y"}
    job = fl_job(
        enterprise, data_source="contributor_local", model_sizes=[20, 3], local_data=schema
    )
    assert job.fl_config.data_is_private is True
    assert (job.fl_config.dataset, job.fl_config.partition_clients) == ("", None)

    with pytest.raises(ValidationError) as excinfo:
        fl_job(enterprise, data_source="contributor_local", cohort_size=None, cohort_fraction=0.5)
    assert "cohort_fraction" in _errors(excinfo)


def test_async_mode_stores_its_buffer_and_staleness(enterprise):
    job = fl_job(
        enterprise,
        mode="async",
        buffer_size=5,
        staleness_bound=4,
        staleness_weighting="polynomial",
    )
    config = job.fl_config
    assert (config.buffer_size, config.staleness_bound, config.staleness_exponent) == (5, 4, 0.5)


def test_a_fraction_cohort_counts_the_partitions_clients_with_over_selection(enterprise):
    job = fl_job(enterprise, cohort_size=None, cohort_fraction=0.1, over_selection=1.3)
    # 10 % of 100 clients, 30 % over-selected: 13 invited, each downloading and uploading 650 f32.
    assert fl_round_bytes_estimate(config=job.fl_config) == 13 * (650 * 4 * 2)
    assert job.fl_config.min_reports == 10


# ----------------------------------------------------------------------------- tier policy


def test_community_cannot_create_fl_jobs(tenant):
    with pytest.raises(PermissionDenied, match="does not include federated learning"):
        fl_job(tenant)
    assert not Job.objects.for_tenant(tenant).exists()


def test_core_cohort_is_capped_with_over_selection_counted(core):
    with pytest.raises(ValidationError) as excinfo:
        fl_job(
            core, cohort_size=800, over_selection=1.5, partition_clients=1797, shards_per_client=1
        )
    assert "at most 1000 clients" in _errors(excinfo)["cohort_size"][0]
    assert "1200" in _errors(excinfo)["cohort_size"][0]


@pytest.mark.parametrize(
    "strategy", ["median", "trimmed_mean", "krum", "multi_krum", "norm_bounding"]
)
def test_robust_strategies_are_enterprise_only(core, enterprise_tenant_factory, strategy):
    with pytest.raises(ValidationError) as excinfo:
        fl_job(core, server_strategy=strategy)
    assert "FL Enterprise" in _errors(excinfo)["server_strategy"][0]

    job = fl_job(enterprise_tenant_factory(), server_strategy=strategy)
    assert job.fl_config.is_robust


@pytest.fixture
def enterprise_tenant_factory(other_tenant):
    def make():  # noqa: ANN202
        other_tenant.tier = Tier.ENTERPRISE
        other_tenant.save(update_fields=["tier"])
        return other_tenant

    return make


def test_robust_aggregation_cannot_combine_with_secure_aggregation(enterprise):
    with pytest.raises(ValidationError) as excinfo:
        fl_job(enterprise, server_strategy="median", secure_aggregation=True)
    assert "choose one" in _errors(excinfo)["secure_aggregation"][0]


def test_privacy_flags_are_stored_where_the_tier_has_them(core):
    job = fl_job(core, secure_aggregation=True)
    assert job.fl_config.secure_aggregation is True

    job = fl_job(
        core, differential_privacy=True, dp_epsilon=10.0, dp_noise_multiplier=1.1, dp_clip_norm=1.0
    )
    assert (job.fl_config.dp_noise_multiplier, job.fl_config.dp_clip_norm) == (1.1, 1.0)


def test_privacy_flags_are_refused_where_the_tier_lacks_them():
    community = POLICIES[Tier.COMMUNITY]
    assert set(
        community.fl_refusals(
            cohort_size=1,
            robust_aggregation=True,
            secure_aggregation=True,
            differential_privacy=True,
        )
    ) == {"kind"}
    no_privacy = dataclasses.replace(
        POLICIES[Tier.CORE], secure_aggregation=False, differential_privacy=False
    )
    refusals = no_privacy.fl_refusals(
        cohort_size=1, robust_aggregation=False, secure_aggregation=True, differential_privacy=True
    )
    assert refusals == {
        "secure_aggregation": "FL Core does not include secure aggregation.",
        "differential_privacy": "FL Core does not include differential privacy.",
    }


def test_dp_with_a_robust_rule_or_compression_is_refused(enterprise):
    with pytest.raises(ValidationError) as excinfo:
        fl_job(
            enterprise,
            differential_privacy=True,
            dp_noise_multiplier=1.0,
            dp_clip_norm=1.0,
            compression="int8",
        )
    assert "uncompressed" in _errors(excinfo)["differential_privacy"][0]


# ----------------------------------------------------------------------------- money


def test_a_prepaid_tenant_that_cannot_pay_a_round_is_refused_with_its_balance(tenant):
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])

    with pytest.raises(ValidationError) as excinfo:
        fl_job(tenant)

    assert "Your balance ($0.00) cannot cover the next round ($0.50)" in excinfo.value.messages[0]
    assert not Job.objects.for_tenant(tenant).exists()
    assert not ModelVersion.objects.for_tenant(tenant).exists()


def test_a_round_with_a_promotional_credit_is_admitted(core):
    job = fl_job(core)
    assert job.status == JobStatus.RUNNING
    assert billing_metering.tenant_balance_cents(tenant=core) == 500  # admission charges nothing


def test_resuming_an_fl_job_admits_a_round_again(core, owner):
    job = fl_job(core)
    services.job_control(tenant=core, job_id=job.pk, role=Role.OWNER, action="pause")
    balance_adjust(tenant=core, amount_cents=-500, actor=owner, reason="spent elsewhere")

    with pytest.raises(ValidationError, match="cannot cover the next round"):
        services.job_control(tenant=core, job_id=job.pk, role=Role.OWNER, action="resume")

    assert Job.objects.for_tenant(core).get(pk=job.pk).status == JobStatus.PAUSED


# ----------------------------------------------------------------------------- models


def test_an_fl_job_without_a_config_or_an_fc_job_without_a_range_is_refused_by_the_database(
    tenant,
):
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(tenant=tenant, name="x", kind="fl")
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(tenant=tenant, name="x", kind="fc")


def test_model_versions_are_unique_per_job_by_number_and_by_hash(enterprise):
    job = fl_job(enterprise)
    version = job.model_versions.get()
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(
            tenant=enterprise,
            job=job,
            version=1,
            sha256=version.sha256,
            storage_key="k",
            size_bytes=4,
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(
            tenant=enterprise, job=job, version=0, sha256="0" * 64, storage_key="k", size_bytes=4
        )


# ----------------------------------------------------------------------------- API


def test_api_creates_lists_and_describes_an_fl_job(api_client, enterprise):
    response = api_client.post(
        "/api/v1/fl-jobs/",
        {"name": "api training", "model_kernel": "logreg", "model_sizes": [64, 10], "seed": 5},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["kind"], body["status"], body["kernel"], body["range_start"]) == (
        "fl",
        "running",
        None,
        None,
    )
    assert body["fl_config"]["parameter_count"] == 650
    assert body["fl_config"]["cohort_size"] == 10

    listed = api_client.get("/api/v1/fl-jobs/").json()
    assert listed["count"] == 1
    assert listed["results"][0]["id"] == body["id"]
    assert api_client.get("/api/v1/jobs/").json()["count"] == 1
    detail = api_client.get(f"/api/v1/jobs/{body['id']}/").json()
    assert detail["fl_config"]["model_sizes"] == [64, 10]
    rounds = api_client.get(f"/api/v1/jobs/{body['id']}/rounds/").json()
    assert rounds == {"count": 0, "next": None, "previous": None, "results": []}
    versions = api_client.get(f"/api/v1/jobs/{body['id']}/model-versions/").json()
    assert versions["count"] == 1
    assert versions["results"][0]["version"] == 0
    assert versions["results"][0]["round"] is None
    assert api_client.get(f"/api/v1/jobs/{body['id']}/result/").status_code == 404


def test_api_field_errors_are_json_and_keyed(api_client, enterprise):
    response = api_client.post(
        "/api/v1/fl-jobs/",
        {"name": "bad", "model_sizes": [64, 10, 10], "model_kernel": "logreg"},
        format="json",
    )
    assert response.status_code == 400
    assert "model_sizes" in str(response.json())
    assert not Job.objects.for_tenant(enterprise).exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"cohort_size": 10**30},
        {"cohort_size": None, "cohort_fraction": 1e308, "over_selection": 1e308},
        {"learning_rate": 1e308, "momentum": -1e308},
        {"server_strategy": "fedadam", "strategy_options": {"eta": 1e308}},
        {"mode": "async", "buffer_size": 10**9, "staleness_bound": -1},
        {"model_sizes": [4096] * 8},
        {"partition": "dirichlet", "dirichlet_alpha": -0.0},
        {"dataset": "", "data_source": "public_partition"},
    ],
)
def test_api_answers_400_to_extreme_values(api_client, enterprise, fields):
    response = api_client.post("/api/v1/fl-jobs/", {"name": "edge", **fields}, format="json")
    assert response.status_code == 400, response.content
    assert not Job.objects.for_tenant(enterprise).exists()


def test_api_refuses_fl_on_community(api_client, tenant):
    response = api_client.post("/api/v1/fl-jobs/", {"name": "no"}, format="json")
    assert response.status_code == 403
    assert not Job.objects.for_tenant(tenant).exists()


def test_api_download_serves_the_exact_bytes_with_hash_etag(api_client, enterprise):
    job = fl_job(enterprise, seed=9)
    version = job.model_versions.get()

    response = api_client.get(f"/api/v1/model-versions/{version.pk}/download/")

    data = b"".join(response.streaming_content)
    assert response.status_code == 200
    assert hashlib.sha256(data).hexdigest() == version.sha256
    assert data == initial_weights("logreg", [64, 10], 9).tobytes()
    assert response["ETag"] == f'"{version.sha256}"'
    assert "immutable" in response["Cache-Control"]
    assert "attachment" in response["Content-Disposition"]
    again = api_client.get(
        f"/api/v1/model-versions/{version.pk}/download/", HTTP_IF_NONE_MATCH=f'"{version.sha256}"'
    )
    assert again.status_code == 304


def test_a_version_exports_to_onnx_that_predicts_as_the_weights_say(
    api_client, owner_client, enterprise, wasm_built
):
    # given an FL job (logistic regression on 8×8 digits) and its initial version
    import onnxruntime

    job = fl_job(enterprise, seed=9)
    version = job.model_versions.get()
    # when the tenant exports it, by API and from the page
    response = api_client.get(f"/api/v1/model-versions/{version.pk}/onnx/")
    page = owner_client.get(f"/models/{version.pk}/onnx/")
    # then both are the same ONNX model, named after the version
    assert response.status_code == page.status_code == 200
    assert response.content == page.content
    assert response["Content-Disposition"].endswith('.onnx"')
    # and it computes softmax(x·W + b) with the stored weights
    weights = initial_weights("logreg", [64, 10], 9)
    matrix, bias = weights[: 64 * 10].reshape(64, 10), weights[64 * 10 :]
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    session = onnxruntime.InferenceSession(response.content, providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(None, {"x": x})
    np.testing.assert_allclose(logits, x @ matrix + bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # and another tenant's version is not found
    other = APIClient()
    assert other.get(f"/api/v1/model-versions/{version.pk}/onnx/").status_code in (401, 403)


def test_api_schema_documents_the_fl_routes():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    paths = schema["paths"]
    assert "post" in paths["/api/v1/fl-jobs/"]
    assert "/api/v1/jobs/{job_id}/rounds/" in paths
    assert "/api/v1/model-versions/{model_version_id}/download/" in paths
    assert "FlJobCreateInputRequest" in schema["components"]["schemas"]


# ----------------------------------------------------------------------------- isolation


def test_another_tenants_fl_job_and_versions_are_404_everywhere(
    api_client, owner_client, enterprise, other_tenant
):
    job, version = fl_job_unchecked(other_tenant)
    before = (Job.objects.unscoped().get(pk=job.pk).status, ModelVersion.objects.unscoped().count())

    api_urls = [
        f"/api/v1/jobs/{job.pk}/",
        f"/api/v1/jobs/{job.pk}/rounds/",
        f"/api/v1/jobs/{job.pk}/model-versions/",
        f"/api/v1/model-versions/{version.pk}/download/",
    ]
    for url in api_urls:
        assert api_client.get(url).status_code == 404, url
    assert api_client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 404
    for url in (f"/jobs/{job.pk}/", f"/models/{version.pk}/download/"):
        assert owner_client.get(url).status_code == 404, url
    assert api_client.get("/api/v1/fl-jobs/").json()["count"] == 0
    after = (Job.objects.unscoped().get(pk=job.pk).status, ModelVersion.objects.unscoped().count())
    assert after == before


# ----------------------------------------------------------------------------- worker weights


def test_workers_fetch_weights_of_running_jobs_by_hash_only(enterprise):
    job = fl_job(enterprise, seed=3)
    version = job.model_versions.get()
    token = dispatch.worker_token_issue(contributor=ContributorFactory())
    worker = APIClient(HTTP_AUTHORIZATION=f"Worker {token}")
    url = f"/weights/{version.sha256}.f32"

    assert APIClient().get(url).status_code == 401
    response = worker.get(url)
    data = b"".join(response.streaming_content)
    assert response.status_code == 200
    assert hashlib.sha256(data).hexdigest() == version.sha256
    assert response["ETag"] == f'"{version.sha256}"'
    assert "Content-Disposition" not in response
    assert "X-Content-SHA256" not in response
    assert worker.get(url, HTTP_IF_NONE_MATCH=f'"{version.sha256}"').status_code == 304
    assert worker.get(f"/weights/{'0' * 64}.f32").status_code == 404

    # once the job stops running, a worker still fetching is late for a closed round: 409
    Job.objects.for_tenant(enterprise).filter(pk=job.pk).update(status=JobStatus.CANCELLED)
    stopped = worker.get(url)
    assert (stopped.status_code, stopped.json()["error"]["code"]) == (409, "round_closed")
    assert worker.get(f"/weights/{'0' * 64}.f32").status_code == 404

    # a draft's initial weights were never handed to a worker: unknown, as for its shards
    Job.objects.for_tenant(enterprise).filter(pk=job.pk).update(status=JobStatus.DRAFT)
    assert worker.get(url).status_code == 404


# ----------------------------------------------------------------------------- pages


def test_the_fl_form_defaults_to_the_demo_and_creates_a_job(owner_client, core):
    page = owner_client.get("/jobs/new/fl/")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'value="64, 200, 200, 10"' in html
    assert 'value="2NN on non-IID digits"' in html

    form = {
        "name": "page training",
        "model_kernel": "mlp",
        "model_sizes": "64, 200, 200, 10",
        "data_source": "public_partition",
        "dataset": "digits",
        "partition": "shards",
        "shards_per_client": "2",
        "partition_clients": "100",
        "rounds": "20",
        "cohort_size": "10",
        "over_selection": "1.0",
        "round_deadline_seconds": "120",
        "local_epochs": "1",
        "batch_size": "10",
        "learning_rate": "0.05",
        "client_optimizer": "sgd",
        "momentum": "0",
        "proximal_mu": "0",
        "server_strategy": "fedavg",
        "strategy_options": "{}",
        "compression": "none",
        "mode": "sync",
    }
    response = owner_client.post("/jobs/new/fl/", form)
    assert response.status_code == 302
    job = Job.objects.for_tenant(core).get()
    assert job.fl_config.rounds == 20

    listing = owner_client.get("/jobs/").content.decode()
    assert "mlp 64-200-200-10 (FL)" in listing
    assert "20 rounds" in listing
    detail = owner_client.get(response["Location"]).content.decode()
    version = job.model_versions.get()
    assert 'data-testid="fl-config"' in detail
    assert "not private data" in detail
    assert f"/models/{version.pk}/download/" in detail
    download = owner_client.get(f"/models/{version.pk}/download/")
    assert hashlib.sha256(b"".join(download.streaming_content)).hexdigest() == version.sha256


def test_the_fl_form_shows_field_errors_and_tier_refusals(owner_client, core):
    response = owner_client.post(
        "/jobs/new/fl/",
        {
            "name": "robust",
            "model_kernel": "mlp",
            "model_sizes": "64, 10",
            "data_source": "public_partition",
            "dataset": "digits",
            "partition": "iid",
            "rounds": "5",
            "cohort_size": "5",
            "over_selection": "1",
            "round_deadline_seconds": "60",
            "local_epochs": "1",
            "batch_size": "10",
            "learning_rate": "0.1",
            "client_optimizer": "sgd",
            "momentum": "0",
            "proximal_mu": "0",
            "server_strategy": "median",
            "compression": "none",
            "mode": "sync",
        },
    )
    assert response.status_code == 400
    assert "Robust aggregation is part of FL Enterprise" in response.content.decode()
    assert not Job.objects.for_tenant(core).exists()
