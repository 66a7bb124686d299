"""Federated analytics jobs: creation and its refusals, the round (invite, upload of the
kernel's vectors, the unweighted fold, the sum derived into statistics), DP noise and budget,
metering once per round, the API and another tenant's absence."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from billing.models import UsageRecord
from billing.operations import balance_adjust
from jobs.analytics import Column, QuerySpec, block_noise_std, summarize_body
from jobs.analytics_models import AnalyticsQuery, AnalyticsResult
from jobs.fl_models import Participation, RoundStatus
from jobs.models import Job, JobStatus
from jobs.protocol import round_invite
from jobs.services.analytics_creation import AnalyticsJobSpec, analytics_job_create
from jobs.services.fl_data import job_partition_shards
from jobs.services.fl_rounds import round_close, round_open
from jobs.worker_models import WorkerKind
from tenants.roles import Role
from tenants.tiers import Tier
from tests.jobs.test_fl_rounds import Uploader, open_round, workers

pytestmark = pytest.mark.django_db

COLUMNS = [
    {"name": "px20", "feature": 20, "lo": 0.0, "hi": 1.0, "bins": 16},
    {"name": "px36", "feature": 36, "lo": 0.0, "hi": 1.0, "bins": 8},
]
SPEC = QuerySpec(
    columns=(Column("px20", 20, 0.0, 1.0, 16), Column("px36", 36, 0.0, 1.0, 8)), max_rows=1000
)


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
def core(tenant, owner):
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return tenant


def create(tenant, *, start: bool = True, **fields) -> Job:  # noqa: ANN003
    spec = AnalyticsJobSpec(**{"name": "stats", "columns": COLUMNS, **fields})
    return analytics_job_create(
        tenant=tenant, actor=None, actor_role=Role.OWNER, spec=spec, start=start
    )


def errors_of(tenant, **fields) -> dict:  # noqa: ANN003
    with pytest.raises(ValidationError) as caught:
        create(tenant, **fields)
    assert not Job.objects.for_tenant(tenant).exists()
    return caught.value.message_dict


def test_creation_stores_the_query_and_the_round_configuration(core) -> None:
    job = create(core, cohort_size=3, rounds=2, seed=4)
    assert (job.kind, job.status) == ("analytics", JobStatus.RUNNING)
    config = job.fl_config
    assert (config.model_kernel, config.parameter_count) == ("analytics", 19 + 11)
    assert (config.cohort_size, config.min_reports, config.rounds) == (3, 3, 2)
    query = AnalyticsQuery.objects.for_tenant(core).get(job=job)
    assert query.columns == COLUMNS
    assert query.max_rows == 1000
    assert not config.differential_privacy


@pytest.mark.parametrize(
    ("fields", "key", "text"),
    [
        ({"columns": []}, "columns", "1 to 256"),
        ({"columns": [{**COLUMNS[0], "feature": 64}]}, "columns", "0 to 63"),
        ({"columns": [{**COLUMNS[0], "lo": 2.0}]}, "columns", "lo < hi"),
        ({"columns": [{**COLUMNS[0], "hi": float("inf")}]}, "columns", "finite"),
        ({"columns": [{**COLUMNS[0], "bins": 0}]}, "columns", "bins is 1 to 1024"),
        ({"columns": [COLUMNS[0], COLUMNS[0]]}, "columns", "used twice"),
        ({"columns": [{**COLUMNS[0], "name": "a b"}]}, "columns", "name is 1 to 60"),
        ({"statistics": ["median"]}, "statistics", "Choose among"),
        ({"quantiles": [1.5]}, "quantiles", "each from 0 to 1"),
        ({"max_rows": 0}, "max_rows", "1 to"),
        ({"cohort_size": 3, "min_reports": 4}, "min_reports", "1 to the cohort (3)"),
        ({"secure_aggregation": True, "cohort_size": 2}, "secure_aggregation", "at least 3"),
        ({"differential_privacy": True}, "dp_epsilon", "required"),
        ({"differential_privacy": True, "dp_epsilon": 1e-4, "rounds": 1000}, "dp_epsilon", "raise"),
        ({"partition": "dirichlet"}, "partition", "iid or shards"),
    ],
)
def test_bad_queries_are_refused_by_field_and_nothing_is_written(core, fields, key, text) -> None:
    errors = errors_of(core, **fields)
    assert key in errors
    assert text in " ".join(errors[key])


def test_community_has_no_analytics_and_core_caps_the_cohort(tenant, core) -> None:
    assert "cohort_size" in errors_of(core, cohort_size=1001)
    tenant.tier = Tier.COMMUNITY
    tenant.save(update_fields=["tier"])
    with pytest.raises(PermissionDenied, match="does not include federated analytics"):
        create(tenant)


def _upload_round(job):  # noqa: ANN001, ANN202
    """Open a round of three and upload each invitee's vector over the public shard it was
    invited to read (the server caps a declared row count by that shard's size) → the round
    and the shards' rows."""
    pool = workers(3, accounted=True)  # DP cohorts take few anonymous contributors
    round_, who = open_round(job, pool)
    public = job_partition_shards(job)
    shards = []
    for participation_id, worker in who.items():
        participation = Participation.objects.for_tenant(job.tenant).get(pk=participation_id)
        rows = public[participation.invite["data"]["client_index"]][0]
        _, done = Uploader(worker, participation).send(summarize_body(rows, SPEC))
        assert done.status_code == 202, done.content
        shards.append(rows)
    return round_, shards


def test_a_round_invites_with_the_query_sums_the_vectors_and_is_charged_once(
    core, django_capture_on_commit_callbacks
) -> None:
    job = create(core, cohort_size=3)
    # when three contributors upload their shards' vectors
    with django_capture_on_commit_callbacks(execute=True):
        round_, shards = _upload_round(job)
    round_.refresh_from_db()
    # then each invite carried the query and no model, a valid round_invite message
    invitation = round_.participations.first().invite
    assert "model" not in invitation
    assert invitation["analytics"]["dimension"] == SPEC.dimension
    message = round_invite(event=invitation, kernel_sha256="a" * 64, deadline_ms=1000)
    assert message["analytics"]["columns"] == COLUMNS
    # then the round closed with the statistics of the union, exactly
    assert (round_.status, round_.reports) == (RoundStatus.CLOSED, 3)
    result = AnalyticsResult.objects.for_tenant(core).get(round=round_)
    union = np.concatenate(shards)
    assert (result.contributors, result.rows) == (3, len(union))
    for stats, column in zip(result.statistics, SPEC.columns, strict=True):
        values = union[:, column.feature].astype(np.float64)
        assert stats["count"] == len(values)
        assert stats["sum"] == values.sum()
        assert stats["mean"] == values.mean()
        expected, _ = np.histogram(values, bins=column.bins, range=(0.0, 1.0))
        assert stats["histogram"] == expected.tolist()
    assert result.noise_std is None
    assert UsageRecord.objects.for_tenant(core).filter(job=job).count() == 1
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED  # one round planned
    with django_capture_on_commit_callbacks(execute=True):
        round_close(round_id=round_.pk)
    assert AnalyticsResult.objects.for_tenant(core).count() == 1
    assert UsageRecord.objects.for_tenant(core).filter(job=job).count() == 1


def test_with_dp_the_sum_is_noised_within_its_stated_std_and_epsilon_is_recorded(
    core, django_capture_on_commit_callbacks
) -> None:
    job = create(core, cohort_size=3, differential_privacy=True, dp_epsilon=5.0, max_rows=1000)
    z = job.fl_config.dp_noise_multiplier
    assert 0 < z < 100
    with django_capture_on_commit_callbacks(execute=True):
        round_, shards = _upload_round(job)
    round_.refresh_from_db()
    result = AnalyticsResult.objects.for_tenant(core).get(round=round_)
    assert result.differentially_private
    exact = sum(np.frombuffer(summarize_body(s, SPEC)[32:], "<f4").astype(float) for s in shards)
    std = block_noise_std(SPEC, noise_multiplier=z)
    noisy = np.array(result.aggregate)
    assert not np.array_equal(noisy, exact)
    assert np.all(np.abs(noisy - exact) <= 6 * std)
    assert np.allclose(np.concatenate([np.array(v) for v in result.noise_std]), std)
    round_.refresh_from_db()
    assert 0 < round_.epsilon_spent <= 5.0


def test_api_creates_describes_and_validates_analytics_jobs(api_client, core) -> None:
    response = api_client.post(
        "/api/v1/analytics-jobs/",
        {"name": "api stats", "columns": COLUMNS, "cohort_size": 3, "seed": 1},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["kind"], body["status"]) == ("analytics", "running")
    assert body["query"]["columns"] == COLUMNS
    assert body["results"] == []
    assert body["fl_config"]["parameter_count"] == SPEC.dimension
    listed = api_client.get("/api/v1/analytics-jobs/").json()
    assert [j["id"] for j in listed["results"]] == [body["id"]]
    assert api_client.get(f"/api/v1/analytics-jobs/{body['id']}/").json()["id"] == body["id"]
    bad = api_client.post(
        "/api/v1/analytics-jobs/",
        {"name": "bad", "columns": [{**COLUMNS[0], "lo": 3.0}]},
        format="json",
    )
    assert bad.status_code == 400
    assert "columns" in str(bad.json())
    missing = api_client.post("/api/v1/analytics-jobs/", {"name": "x"}, format="json")
    assert missing.status_code == 400
    assert Job.objects.for_tenant(core).count() == 1


def test_another_tenants_analytics_job_is_404_and_untouched(api_client, core, other_tenant):
    other_tenant.tier = Tier.CORE
    other_tenant.save(update_fields=["tier"])
    theirs = create(other_tenant, start=False)
    assert api_client.get(f"/api/v1/analytics-jobs/{theirs.pk}/").status_code == 404
    assert api_client.get("/api/v1/analytics-jobs/").json()["count"] == 0
    mine = create(core, start=False)
    fl_detail = api_client.get(f"/api/v1/fl-jobs/{mine.pk}/")
    assert fl_detail.status_code == 404  # an analytics job is not an FL job either
    theirs.refresh_from_db()
    assert theirs.status == JobStatus.DRAFT


def test_the_form_creates_a_job_and_refuses_bad_lines(owner_client, core) -> None:
    page = owner_client.get("/jobs/new/analytics/")
    assert page.status_code == 200
    assert b"What the server learns" in page.content
    bad = owner_client.post(
        "/jobs/new/analytics/",
        {"name": "x", "columns": "px20, 20, 0, 1", "statistics": ["mean"], "max_rows": 10,
         "data_source": "public_partition", "dataset": "digits", "partition": "iid",
         "partition_clients": 3, "rounds": 1, "cohort_size": 3, "round_deadline_seconds": 60,
         "dp_delta": 1e-5, "dp_accountant": "rdp"},
    )  # fmt: skip
    assert bad.status_code == 400
    assert "Line 1: give name, feature, lo, hi, bins" in bad.content.decode()
    assert not Job.objects.for_tenant(core).exists()
    created = owner_client.post(
        "/jobs/new/analytics/",
        {"name": "pixels", "columns": "px20, 20, 0, 1, 16\npx36, 36, 0, 1, 8",
         "statistics": ["mean", "histogram"], "quantiles": "0.5", "max_rows": 1000,
         "data_source": "public_partition", "dataset": "digits", "partition": "iid",
         "partition_clients": 3, "rounds": 1, "cohort_size": 3, "round_deadline_seconds": 60,
         "dp_delta": 1e-5, "dp_accountant": "rdp"},
    )  # fmt: skip
    job = Job.objects.for_tenant(core).get()
    assert created.status_code == 302
    assert created["Location"] == f"/jobs/{job.pk}/analytics/"
    assert AnalyticsQuery.objects.for_tenant(core).get(job=job).columns == COLUMNS
    waiting = owner_client.get(f"/jobs/{job.pk}/analytics/")
    assert b"No round has closed yet" in waiting.content


def test_the_results_page_shows_the_statistics_and_histogram_data(
    owner_client, core, django_capture_on_commit_callbacks
) -> None:
    job = create(core, cohort_size=3)
    with django_capture_on_commit_callbacks(execute=True):
        _, shards = _upload_round(job)
    page = owner_client.get(f"/jobs/{job.pk}/analytics/")
    html = page.content.decode()
    assert page.status_code == 200
    assert f"3 contributors, {sum(len(rows) for rows in shards)} rows" in html
    assert 'data-histogram="1"' in html
    assert '"counts": [' in html  # the chart's data, embedded as JSON
    assert "jobs/analytics.js" in html
    detail = owner_client.get(f"/jobs/{job.pk}/")
    assert f"/jobs/{job.pk}/analytics/" in detail.content.decode()


def test_another_tenants_results_page_is_404(owner_client, core, other_tenant) -> None:
    other_tenant.tier = Tier.CORE
    other_tenant.save(update_fields=["tier"])
    theirs = create(other_tenant, start=False)
    assert owner_client.get(f"/jobs/{theirs.pk}/analytics/").status_code == 404


def test_a_pld_job_is_calibrated_with_rdp_and_fits_its_budget_under_pld(core) -> None:
    from jobs.privacy.accounting import epsilon_spent

    job = create(core, differential_privacy=True, dp_epsilon=2.0, rounds=3, dp_accountant="pld")
    config = job.fl_config
    assert (config.dp_accountant, config.dp_rounds_allowed) == ("pld", 3)
    spent = epsilon_spent(
        noise_multiplier=config.dp_noise_multiplier,
        sampling_probability=1.0,
        rounds=3,
        delta=config.dp_delta,
        accountant="pld",
    )
    assert spent <= 2.0


def test_browser_pages_and_edge_workers_are_both_invited_to_analytics_rounds(core) -> None:
    # given two edge workers and a browser page online (the page runs the analytics kernel too)
    edges = workers(2)
    page = workers(1)[0]
    page.kind = WorkerKind.BROWSER
    page.save(update_fields=["kind"])
    job = create(core, cohort_size=3, min_reports=2)
    # when its round opens, then all three are invited
    assert round_open(job=job)
    invited = {
        str(w) for w in Participation.objects.for_tenant(core).values_list("worker_id", flat=True)
    }
    assert invited == {str(w.pk) for w in [*edges, page]}
    assert job.status == JobStatus.RUNNING


def test_the_worker_page_lists_analytics_jobs_on_local_data_with_their_columns(
    core, other_tenant
) -> None:
    # given an analytics job on contributors' own data, one on a public partition, and another
    # tenant's private-pool analytics job
    local = create(core, name="sensor stats", data_source="contributor_local", max_rows=500)
    create(core, name="public stats")
    other_tenant.tier = Tier.CORE
    other_tenant.save(update_fields=["tier"])
    balance_adjust(tenant=other_tenant, amount_cents=5000, actor=None, reason="t", promotional=True)
    hidden = create(other_tenant, name="their pool", data_source="contributor_local")
    hidden.private_pool = True
    hidden.save(update_fields=["private_pool"])
    # when the worker page asks which jobs read local data
    jobs = Client().get("/contribute/local-data-jobs.json").json()["jobs"]
    # then only the public-pool local job is listed, with its column names in vector order
    assert jobs == [
        {
            "job": str(local.pk),
            "name": "sensor stats",
            "organisation": core.name,
            "kind": "analytics",
            "schema": {"format": "columns", "columns": ["px20", "px36"]},
            "max_samples": 500,
        }
    ]
