"""Jobs through the REST API and the web pages; kernel downloads; contributors."""

from __future__ import annotations

import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient
from wasmtime import wat2wasm

from jobs import dispatch
from jobs.models import Job, Kernel, Task
from tenants.models import Tenant
from tenants.tiers import Tier
from tests.jobs.helpers import new_worker, work_until_done

pytestmark = pytest.mark.django_db

VALID_KERNEL_WAT = """
(module
  (memory (export "memory") 1 2)
  (func (export "ccgsc_abi_version") (result i32) i32.const 1)
  (func (export "ccgsc_input") (param i32) (result i32) i32.const 1024)
  (func (export "ccgsc_output") (result i32) i32.const 2048)
  (func (export "ccgsc_run") (param i32) (result i32) i32.const 8))
"""


def test_create_job_via_api_then_read_progress_and_result(
    api_client, tenant, kernels, django_capture_on_commit_callbacks
):
    response = api_client.post(
        "/api/v1/jobs/",
        {
            "name": "api primes",
            "kernel": "prime_count",
            "range_start": 1,
            "range_end": 100_001,
            "chunk_size": 50_000,
            "quorum": 2,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["status"], body["task_count"], body["kernel"]) == ("running", 2, "prime_count")
    with django_capture_on_commit_callbacks(execute=True):
        work_until_done([new_worker()[0], new_worker()[0]])
    detail = api_client.get(f"/api/v1/jobs/{body['id']}/").json()
    assert detail["status"] == "completed"
    assert detail["result"]["primes"] == 9592
    result = api_client.get(f"/api/v1/jobs/{body['id']}/result/").json()
    assert result["result"]["primes"] == 9592
    assert result["kernel"]["sha256"] == kernels["prime_count"].sha256
    csv = api_client.get(f"/api/v1/jobs/{body['id']}/result/?format=csv")
    assert csv["Content-Type"].startswith("text/csv")
    assert b"primes,9592" in csv.content
    tasks = api_client.get(f"/api/v1/jobs/{body['id']}/tasks/").json()
    assert [t["status"] for t in tasks["results"]] == ["validated", "validated"]


def test_job_validation_errors_write_nothing(api_client, tenant, kernels):
    cases = [
        ({"kernel": "nope"}, "kernel"),
        ({"quorum": 9}, "quorum"),
        ({"range_end": 0}, "range_end"),
        ({"chunk_size": 10}, "chunk_size"),  # 10,000 tasks over the community limit
        ({"kernel": "param_sweep", "params": {"function_id": 0}}, "params"),
    ]
    base = {
        "name": "bad",
        "kernel": "prime_count",
        "range_start": 0,
        "range_end": 1_000_000,
        "chunk_size": 100_000,
    }
    for override, field in cases:
        response = api_client.post("/api/v1/jobs/", {**base, **override}, format="json")
        assert response.status_code == 400, (override, response.json())
        assert field in response.json()["error"]["fields"], (override, response.json())
    assert not Job.objects.for_tenant(tenant).exists()
    assert not Task.objects.unscoped().exists()


def test_param_sweep_reports_best_points(api_client, kernels, django_capture_on_commit_callbacks):
    response = api_client.post(
        "/api/v1/jobs/",
        {
            "name": "sweep",
            "kernel": "param_sweep",
            "range_start": 0,
            "range_end": 101 * 101,
            "chunk_size": 2000,
            "quorum": 1,
            "params": {
                "function_id": 0,
                "x0": -2,
                "x1": 2,
                "nx": 101,
                "y0": -1,
                "y1": 3,
                "ny": 101,
                "k": 3,
            },
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    with django_capture_on_commit_callbacks(execute=True):
        work_until_done([new_worker()[0]])
    result = api_client.get(f"/api/v1/jobs/{response.json()['id']}/result/").json()["result"]
    best = result["best"][0]
    assert (round(best["x"], 9), round(best["y"], 9), best["value"]) == (1.0, 1.0, 0.0)
    assert len(result["best"]) == 3


def test_controls_via_api(api_client, kernels):
    job = api_client.post(
        "/api/v1/jobs/",
        {
            "name": "c",
            "kernel": "prime_count",
            "range_start": 1,
            "range_end": 1000,
            "chunk_size": 100,
            "start": False,
        },
        format="json",
    ).json()
    assert job["status"] == "draft"
    assert api_client.post(f"/api/v1/jobs/{job['id']}/start/").json()["status"] == "running"
    assert api_client.post(f"/api/v1/jobs/{job['id']}/pause/").json()["status"] == "paused"
    assert api_client.post(f"/api/v1/jobs/{job['id']}/start/").status_code == 400
    assert api_client.post(f"/api/v1/jobs/{job['id']}/resume/").json()["status"] == "running"
    assert api_client.post(f"/api/v1/jobs/{job['id']}/cancel/").json()["status"] == "cancelled"


def test_community_tier_cannot_upload_kernels_but_core_can(api_client, tenant):
    module = wat2wasm(VALID_KERNEL_WAT)
    upload = {
        "name": "mine",
        "version": "1",
        "reducer": "sum_u64",
        "output_bytes": 8,
        "module": SimpleUploadedFile("k.wasm", module),
    }
    assert api_client.post("/api/v1/kernels/", upload, format="multipart").status_code == 403
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.CORE)
    upload["module"] = SimpleUploadedFile("k.wasm", module)
    created = api_client.post("/api/v1/kernels/", upload, format="multipart")
    assert created.status_code == 201, created.json()
    assert created.json()["sha256"] == hashlib.sha256(module).hexdigest()
    bad = {
        **upload,
        "version": "2",
        "module": SimpleUploadedFile("k.wasm", wat2wasm('(module (import "env" "f" (func)))')),
    }
    rejected = api_client.post("/api/v1/kernels/", bad, format="multipart")
    assert rejected.status_code == 400
    assert "import" in rejected.json()["error"]["fields"]["module"][0]
    assert Kernel.objects.filter(tenant=tenant).count() == 1


def test_kernel_module_download_needs_a_worker_token(client, kernels):
    kernel = kernels["prime_count"]
    url = f"/kernels/{kernel.sha256}.wasm"
    assert client.get(url).status_code == 401
    _, token = dispatch.contributor_create_anonymous()
    response = client.get(url, HTTP_AUTHORIZATION=f"Worker {token}")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/wasm"
    assert hashlib.sha256(response.content).hexdigest() == kernel.sha256
    assert (
        client.get(
            url, HTTP_AUTHORIZATION=f"Worker {token}", HTTP_IF_NONE_MATCH=f'"{kernel.sha256}"'
        ).status_code
        == 304
    )


def test_anonymous_contributor_and_claim(owner):
    token = APIClient().post("/api/v1/contributors/anonymous/").json()["token"]
    device = dispatch.worker_token_verify(token=token)
    assert device is not None
    assert device.user is None
    client = APIClient()
    client.force_authenticate(owner)
    claimed = client.post("/api/v1/contributors/me/", {"token": token}, format="json")
    assert claimed.status_code == 200
    device.refresh_from_db()
    assert device.user == owner


def test_claim_into_existing_contributor_moves_work_and_revokes_device(owner, tenant, kernels):
    mine = dispatch.contributor_for_user(user=owner)
    _, token = new_worker(validated_replicas=3, validated_work_units=300)
    merged = dispatch.contributor_claim(user=owner, token=token)
    assert merged.pk == mine.pk
    assert (merged.validated_replicas, merged.validated_work_units) == (3, 300)
    assert dispatch.worker_token_verify(token=token) is None


def test_pages_render(owner_client, kernels, tenant):
    assert owner_client.get(reverse("job_list")).status_code == 200
    page = owner_client.get(reverse("job_create"))
    assert page.status_code == 200
    assert "prime_count" in page.content.decode()
    created = owner_client.post(
        reverse("job_create"),
        {
            "name": "web",
            "kernel": str(kernels["prime_count"].pk),
            "range_start": 1,
            "range_end": 1001,
            "chunk_size": 100,
            "quorum": 2,
            "params": "{}",
            "priority": 0,
            "lease_seconds": 60,
        },
    )
    assert created.status_code == 302
    job = Job.objects.for_tenant(tenant).get()
    detail = owner_client.get(created.url)
    assert detail.status_code == 200
    assert f"/ws/jobs/{job.pk}/" in detail.content.decode()
    assert owner_client.get(reverse("contribute")).status_code == 200
    assert owner_client.get(reverse("contributor_profile")).status_code == 200
    assert owner_client.get(reverse("dashboard")).status_code == 200


def test_private_pool_jobs_go_only_to_the_tenants_registered_workers(api_client, tenant, kernels):
    # community tenants have no private pools
    assert (
        api_client.post("/api/v1/pool-workers/", {"name": "rack-1"}, format="json").status_code
        == 403
    )
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.ENTERPRISE)
    registered = api_client.post("/api/v1/pool-workers/", {"name": "rack-1"}, format="json")
    assert registered.status_code == 201
    pool_contributor = dispatch.worker_token_verify(token=registered.json()["token"])
    assert pool_contributor.pool_tenant_id == tenant.pk
    job = api_client.post(
        "/api/v1/jobs/",
        {
            "name": "private",
            "kernel": "prime_count",
            "range_start": 1,
            "range_end": 1001,
            "chunk_size": 500,
            "quorum": 1,
            "private_pool": True,
        },
        format="json",
    )
    assert job.status_code == 201, job.json()
    public_worker = new_worker()[0]
    assert dispatch.assignment_claim(worker_id=public_worker.worker_id, count=4) == []
    pool_session = dispatch.worker_connect(
        contributor=pool_contributor,
        hello={
            "client": {"kind": "edge", "version": "t"},
            "capabilities": {"cores": 1},
            "slots": 4,
        },
        channel_name="",
    )
    offers = dispatch.assignment_claim(worker_id=pool_session.worker_id, count=4)
    assert {str(o.job_id) for o in offers} == {job.json()["id"]}
    assert len(offers) == 2
