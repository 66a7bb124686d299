"""FL jobs on contributors' own local data: the schema a tenant declares (service, API, form),
what the invite carries, the sample cap on private updates, and the worker page's job list."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from jobs import protocol
from jobs.fl_models import FlConfig, Participation, ParticipationStatus
from jobs.models import Job
from jobs.services.fl_rounds_cohort import round_invite_payload
from tests.factories import ContributorFactory
from tests.jobs.fl_helpers import fl_job
from tests.jobs.test_fl_rounds import D, Uploader, body, open_round, workers

pytestmark = pytest.mark.django_db

CSV = {"format": "csv", "features": 64, "classes": 10, "label_column": "digit"}
IMAGES = {
    "format": "images",
    "features": 64,
    "classes": 3,
    "image_width": 8,
    "image_height": 8,
    "class_names": ["cat", "dog", "bird"],
}


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
    tenant.tier = "enterprise"
    tenant.save(update_fields=["tier"])
    return tenant


def local_job(tenant, **fields):  # noqa: ANN001, ANN003, ANN201
    return fl_job(tenant, **{"data_source": "contributor_local", "local_data": CSV, **fields})


# ----------------------------------------------------------------------------- the service


def test_a_csv_schema_is_normalised_and_stored_with_the_default_cap(enterprise):
    job = local_job(enterprise, local_data={**CSV, "features": 64.0})
    config = job.fl_config
    assert config.local_data == CSV
    assert isinstance(config.local_data["features"], int)
    assert (config.max_local_samples, config.data_is_private) == (10_000, True)


def test_an_image_schema_by_index_and_an_explicit_cap_are_stored(enterprise):
    job = local_job(enterprise, model_sizes=[64, 3], local_data=IMAGES, max_local_samples=500)
    assert job.fl_config.local_data == IMAGES
    assert job.fl_config.max_local_samples == 500
    by_index = local_job(enterprise, local_data={**CSV, "label_column": None, "label_index": 64})
    assert by_index.fl_config.local_data == {
        "format": "csv",
        "features": 64,
        "classes": 10,
        "label_index": 64,
    }


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"local_data": None}, "local_data", "Declare the data contributors must provide"),
        ({"local_data": {**CSV, "format": "xlsx"}}, "local_data", "one of csv, images"),
        ({"local_data": {**CSV, "features": 63}}, "local_data", "must have 64 features"),
        ({"local_data": {**CSV, "classes": 9}}, "local_data", "and 10 classes"),
        ({"local_data": {**CSV, "label_index": 1}}, "local_data", "names its label column"),
        ({"local_data": {**CSV, "label_column": " digit"}}, "local_data", "spaces around it"),
        ({"local_data": {**CSV, "label_column": "a/b"}}, "local_data", "a slash"),
        (
            {"local_data": {**CSV, "label_column": None, "label_index": 65}},
            "local_data",
            "from 0 to 64",
        ),
        ({"local_data": {**CSV, "image_width": 8}}, "local_data", "Unknown fields"),
        (
            {"model_sizes": [64, 3], "local_data": {**IMAGES, "image_width": 7}},
            "local_data",
            "have 56 pixels",
        ),
        (
            {"model_sizes": [64, 3], "local_data": {**IMAGES, "class_names": ["a", "b"]}},
            "local_data",
            "Give the 3 class names",
        ),
        (
            {"model_sizes": [64, 3], "local_data": {**IMAGES, "class_names": ["a", "a", "b"]}},
            "local_data",
            "must differ",
        ),
        (
            {"model_sizes": [64, 3], "local_data": {**IMAGES, "image_height": 65}},
            "local_data",
            "1 to 64 pixels",
        ),
        ({"max_local_samples": 0}, "max_local_samples", "1 to 1,000,000"),
        ({"max_local_samples": 1_000_001}, "max_local_samples", "1 to 1,000,000"),
    ],
)
def test_a_bad_schema_or_cap_is_refused_by_field_and_nothing_is_written(
    enterprise, fields, field, message
):
    with pytest.raises(ValidationError) as excinfo:
        local_job(enterprise, **fields)
    errors = excinfo.value.message_dict
    assert list(errors) == [field]
    assert message in errors[field][0]
    assert not Job.objects.for_tenant(enterprise).exists()
    assert not FlConfig.objects.for_tenant(enterprise).exists()


def test_a_public_partition_ignores_a_schema(enterprise):
    job = fl_job(enterprise, local_data=CSV, max_local_samples=5)
    assert (job.fl_config.local_data, job.fl_config.max_local_samples) == ({}, None)


# ----------------------------------------------------------------------------- the API and form


def test_the_api_creates_a_local_data_job_and_shows_its_schema(api_client, enterprise):
    response = api_client.post(
        "/api/v1/fl-jobs/",
        {
            "name": "their own digits",
            "model_kernel": "logreg",
            "model_sizes": [64, 3],
            "data_source": "contributor_local",
            "local_data": IMAGES,
            "max_local_samples": 2000,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    config = response.json()["fl_config"]
    assert (config["local_data"], config["max_local_samples"]) == (IMAGES, 2000)
    assert config["data_is_private"] is True


@pytest.mark.parametrize(
    ("local_data", "cap", "where"),
    [
        ({**CSV, "colour": "blue"}, None, "local_data"),
        ({**CSV, "features": "many"}, None, "local_data"),
        ({**CSV, "class_names": "abc"}, None, "local_data"),
        ({**CSV, "features": 10}, None, "local_data"),
        (CSV, -1, "max_local_samples"),
        (CSV, 10**12, "max_local_samples"),
        (None, None, "local_data"),
    ],
)
def test_the_api_answers_400_keyed_to_a_bad_schema(api_client, enterprise, local_data, cap, where):
    fields = {
        "name": "bad",
        "model_kernel": "logreg",
        "model_sizes": [64, 10],
        "data_source": "contributor_local",
        "local_data": local_data,
        "max_local_samples": cap,
    }
    response = api_client.post("/api/v1/fl-jobs/", fields, format="json")
    assert response.status_code == 400, response.content
    assert where in response.json()["error"]["fields"]
    assert not Job.objects.for_tenant(enterprise).exists()


FORM = {
    "name": "page training",
    "model_kernel": "logreg",
    "model_sizes": "64, 3",
    "data_source": "contributor_local",
    "rounds": "5",
    "cohort_size": "2",
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


def test_the_form_creates_image_and_csv_jobs_with_features_from_the_model(owner_client, enterprise):
    page = owner_client.get("/jobs/new/fl/").content.decode()
    assert 'name="local_format"' in page
    assert 'name="max_local_samples"' in page
    images = {
        **FORM,
        "local_format": "images",
        "local_image_size": "8×8",
        "local_class_names": "cat, dog ,bird",
    }
    assert owner_client.post("/jobs/new/fl/", images).status_code == 302
    csv = {**FORM, "name": "csv", "local_format": "csv", "local_label": "0"}
    csv["max_local_samples"] = "300"
    assert owner_client.post("/jobs/new/fl/", csv).status_code == 302
    configs = {j.name: j.fl_config for j in Job.objects.for_tenant(enterprise)}
    assert configs["page training"].local_data == {**IMAGES}
    assert configs["csv"].local_data == {
        "format": "csv",
        "features": 64,
        "classes": 3,
        "label_index": 0,
    }
    assert configs["csv"].max_local_samples == 300
    detail = owner_client.get(f"/jobs/{Job.objects.for_tenant(enterprise).get(name='csv').pk}/")
    assert "label column #0" in detail.content.decode()


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({}, "Declare the data contributors must provide"),
        ({"local_format": "images", "local_image_size": "8 by 8"}, "width x height"),
        (
            {"local_format": "images", "local_image_size": "4x4", "local_class_names": "a,b,c"},
            "Grey 4×4 images have 16 pixels",
        ),
        ({"local_format": "csv", "local_label": ""}, "names its label column"),
    ],
)
def test_the_form_shows_schema_errors_and_creates_nothing(owner_client, enterprise, fields, text):
    response = owner_client.post("/jobs/new/fl/", {**FORM, **fields})
    assert response.status_code == 400
    assert text in response.content.decode()
    assert not Job.objects.for_tenant(enterprise).exists()


# ----------------------------------------------------------------------------- invites and uploads


def test_the_invite_carries_the_schema_and_cap_and_passes_the_protocol(enterprise):
    job = local_job(enterprise, cohort_size=1, min_reports=1, max_local_samples=40)
    pool = workers(1)
    round_, who = open_round(job, pool)
    participation = Participation.objects.for_tenant(enterprise).get(pk=next(iter(who)))
    event = round_invite_payload(
        job=job,
        round=round_,
        participation=participation,
        version=job.model_versions.get(),
        shard=None,
    )
    assert event["data"] == {
        "source": "contributor_local",
        "private": True,
        "schema": CSV,
        "max_samples": 40,
    }
    # The suite checks every built message against the protocol definition (tests/conftest.py).
    message = protocol.round_invite(event=event, kernel_sha256="a" * 64, deadline_ms=1000)
    assert message["data"]["schema"] == CSV
    bad = {**event, "data": {**event["data"], "schema": {**CSV, "format": "xlsx"}}}
    with pytest.raises(protocol.OutboundMessageError):
        protocol.round_invite(event=bad, kernel_sha256="a" * 64, deadline_ms=1000)
    assert participation.invite["data"]["max_samples"] == 40


def test_a_private_update_declaring_more_samples_than_the_cap_is_rejected(
    enterprise, django_capture_on_commit_callbacks
):
    job = local_job(
        enterprise, cohort_size=2, min_reports=2, max_local_samples=50, model_sizes=[64, 10]
    )
    pool = workers(2)
    round_, who = open_round(job, pool)
    over, at_cap = (Participation.objects.for_tenant(enterprise).get(pk=pk) for pk in who)
    with django_capture_on_commit_callbacks(execute=True):
        _, refused = Uploader(who[over.pk], over).send(body(np.zeros(D, np.float32), samples=51))
        _, accepted = Uploader(who[at_cap.pk], at_cap).send(
            body(np.zeros(D, np.float32), samples=50)
        )
    assert (refused.status_code, refused.json()["rejection"]["code"]) == (422, "samples_exceeded")
    over.refresh_from_db()
    assert (over.status, over.samples) == (ParticipationStatus.REJECTED, 0)
    assert "at most 50" in over.rejection_message
    assert accepted.status_code == 202
    at_cap.refresh_from_db()
    assert (at_cap.status, at_cap.samples) == (ParticipationStatus.REPORTED, 50)


def test_a_public_partition_update_is_not_held_to_the_private_cap(
    enterprise, django_capture_on_commit_callbacks
):
    job = fl_job(enterprise, cohort_size=1, min_reports=1, max_local_samples=5)
    (worker,) = workers(1)
    _, who = open_round(job, [worker])
    participation = Participation.objects.for_tenant(enterprise).get(pk=next(iter(who)))
    with django_capture_on_commit_callbacks(execute=True):
        _, done = Uploader(worker, participation).send(
            body(np.full(D, 0.01, np.float32), samples=6)
        )
    assert done.status_code == 202


# ----------------------------------------------------------------------------- the worker page


def test_the_worker_page_lists_running_local_data_jobs_of_the_public_pool_only(
    enterprise, other_tenant, django_user_model
):
    shown = local_job(enterprise, name="digits at home")
    fl_job(enterprise, name="public partition")
    paused = local_job(enterprise, name="paused")
    paused.status = "paused"
    paused.save(update_fields=["status"])
    stopped = local_job(enterprise, name="cancelled")
    stopped.status = "cancelled"
    stopped.save(update_fields=["status"])
    other_tenant.tier = "enterprise"
    other_tenant.save(update_fields=["tier"])
    private = local_job(other_tenant, name="their pool")
    private.private_pool = True
    private.save(update_fields=["private_pool"])

    anonymous = Client().get("/contribute/local-data-jobs.json")
    assert anonymous.status_code == 200
    assert anonymous["Cache-Control"] == "private, no-store"
    jobs = anonymous.json()["jobs"]
    assert {j["name"] for j in jobs} == {"digits at home", "paused"}
    entry = next(j for j in jobs if j["job"] == str(shown.pk))
    assert entry == {
        "job": str(shown.pk),
        "name": "digits at home",
        "organisation": enterprise.name,
        "kind": "fl",
        "schema": CSV,
        "max_samples": 10_000,
    }
    # A member of the other tenant's private pool sees that pool's job too.
    user = django_user_model.objects.create_user(email="pool@example.org", password="x" * 12)
    ContributorFactory(user=user, pool_tenant=other_tenant)
    member = Client()
    member.force_login(user)
    names = {j["name"] for j in member.get("/contribute/local-data-jobs.json").json()["jobs"]}
    assert names == {"digits at home", "paused", "their pool"}
    page = Client().get("/contribute/").content.decode()
    assert 'data-local-data-jobs-url="/contribute/local-data-jobs.json"' in page
