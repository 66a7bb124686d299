"""Malformed input answers a clear error, never a 500; everything under /api/ answers JSON."""

from __future__ import annotations

import json
import uuid

import pytest
from django.urls import reverse

from jobs.models import Job, Task
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db

BASE_JOB = {
    "name": "fuzzed",
    "kernel": "prime_count",
    "range_start": 0,
    "range_end": 1_000_000,
    "chunk_size": 100_000,
}
HUGE = 10**400
BAD_PARAMS = [
    ("prime_count", "abc"),
    ("prime_count", {"a": 1}),
    ("prime_count", HUGE),
    ("prime_count", ["abc"]),
    ("prime_count", [{"a": 1}]),
    ("prime_count", [[1, 2]]),
    ("prime_count", [HUGE]),
    ("prime_count", [True]),
    ("param_sweep", "abc"),
    ("param_sweep", ["abc"]),
    ("param_sweep", {"function_id": HUGE}),
    ("param_sweep", {"x0": HUGE}),
    ("param_sweep", {"x0": "abc"}),
    ("param_sweep", {"x0": {"nested": 1}}),
]


@pytest.mark.parametrize(("kernel", "params"), BAD_PARAMS)
def test_api_rejects_malformed_params_with_a_field_error(
    api_client, tenant, kernels, kernel, params
):
    # when
    response = api_client.post(
        "/api/v1/jobs/", {**BASE_JOB, "kernel": kernel, "params": params}, format="json"
    )
    # then
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert "params" in error["fields"]
    assert not Job.objects.for_tenant(tenant).exists()
    assert not Task.objects.unscoped().exists()


@pytest.mark.parametrize(
    ("kernel", "raw"),
    [
        ("prime_count", '"abc"'),
        ("prime_count", '["abc"]'),
        ("prime_count", '[{"a": 1}]'),
        ("prime_count", f"[{HUGE}]"),
        ("param_sweep", f'{{"function_id": {HUGE}}}'),
        ("param_sweep", f'{{"x0": {HUGE}}}'),
        ("param_sweep", '{"x0": "abc"}'),
    ],
)
def test_job_form_rejects_malformed_params_with_a_field_error(
    owner_client, tenant, kernels, kernel, raw
):
    # when
    response = owner_client.post(
        reverse("job_create"),
        {
            **BASE_JOB,
            "kernel": str(kernels[kernel].pk),
            "quorum": 2,
            "priority": 0,
            "lease_seconds": 60,
            "params": raw,
        },
    )
    # then
    assert response.status_code == 400
    assert response.context["form"].errors["params"]
    assert not Job.objects.for_tenant(tenant).exists()


@pytest.mark.parametrize(
    "data", [{}, {"tenant_id": ""}, {"tenant_id": "not-a-uuid"}, {"tenant_id": "1"}]
)
def test_tenant_switch_with_a_missing_or_malformed_id_is_404(owner_client, tenant, data):
    response = owner_client.post(reverse("tenant_switch"), data)
    assert response.status_code == 404
    assert owner_client.session.get("active_tenant_id") in (None, str(tenant.pk))


def test_api_tenant_header_with_a_malformed_id_is_a_json_404(client, owner, tenant):
    client.force_login(owner)
    response = client.get("/api/v1/tenant/", headers={"X-Tenant": "not-a-uuid"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/jobs/not-a-uuid/"),
        ("post", "/api/v1/jobs/not-a-uuid/start/"),
        ("get", "/api/v1/kernels/123/"),
        ("delete", "/api/v1/api-keys/x/"),
        ("patch", "/api/v1/members/zzz/"),
        ("get", "/api/v1/no-such-route/"),
        ("get", "/api/v2/jobs/"),
        ("post", "/api/nothing"),
    ],
)
def test_every_api_miss_answers_the_json_error_format(api_client, method, path):
    response = getattr(api_client, method)(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert error["message"]


def test_api_miss_with_a_session_and_no_csrf_token_is_still_a_json_404(client, owner):
    client.handler.enforce_csrf_checks = True
    client.force_login(owner)
    response = client.post("/api/v1/no-such-route/", {})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_a_missing_trailing_slash_is_named_in_the_error(api_client):
    response = api_client.get("/api/v1/jobs")
    assert response.status_code == 404
    assert "did you mean /api/v1/jobs/ ?" in response.json()["error"]["message"]
    assert "did you mean" not in api_client.get("/api/v1/nothing").json()["error"]["message"]


def test_a_well_formed_unknown_id_is_still_the_api_404(api_client):
    response = api_client.get(f"/api/v1/jobs/{uuid.uuid4()}/")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not found."}}


def test_pages_outside_the_api_keep_the_html_404(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_other_tenant_objects_stay_invisible_through_malformed_ids(api_client, other_tenant):
    MembershipFactory(tenant=other_tenant)
    response = api_client.get(f"/api/v1/members/{other_tenant.pk}x/")
    assert response.status_code == 404


def test_errors_outside_any_view_answer_json_under_the_api_and_html_elsewhere(rf):
    from django.core.exceptions import BadRequest
    from django.core.exceptions import PermissionDenied as DjangoPermissionDenied

    from ccgsc_site import views

    api, page = rf.get("/api/v1/jobs/"), rf.get("/jobs/")
    cases = [
        (views.server_error, (), 500, "server_error"),
        (views.bad_request, (BadRequest(),), 400, "bad_request"),
        (views.permission_denied, (DjangoPermissionDenied(),), 403, "permission_denied"),
        (views.page_not_found, (Exception(),), 404, "not_found"),
    ]
    for handler, args, status, code in cases:
        json_response = handler(api, *args)
        assert json_response.status_code == status
        assert json.loads(json_response.content)["error"]["code"] == code
        html_response = handler(page, *args)
        assert html_response.status_code == status
        assert not html_response["Content-Type"].startswith("application/json")
