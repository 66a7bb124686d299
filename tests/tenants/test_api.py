"""The REST API: API-key and session auth, the error format, pagination, keys and members."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tenants import services
from tenants.models import ApiKey, AuditEvent
from tenants.roles import Role
from tests.factories import PASSWORD, MembershipFactory

pytestmark = pytest.mark.django_db


def test_api_key_authenticates_as_its_tenant(api_client, tenant):
    response = api_client.get("/api/v1/tenant/")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(tenant.pk)
    assert body["role"] == Role.ADMIN
    assert body["policy"]["job_kinds"] == ["fc"]
    assert body["policy"]["secure_aggregation"] is False
    key = ApiKey.objects.for_tenant(tenant).get()
    assert key.last_used_at is not None


def test_unauthenticated_and_bad_keys_get_the_error_format():
    anonymous = APIClient().get("/api/v1/tenant/")
    assert anonymous.status_code in (401, 403)
    assert set(anonymous.json()["error"]) >= {"code", "message"}
    bad = APIClient(HTTP_AUTHORIZATION="Api-Key ccg_deadbeef_nope").get("/api/v1/tenant/")
    assert bad.status_code == 401
    assert bad.json()["error"]["message"] == "Invalid or revoked API key."


def test_create_key_shows_secret_once_then_revoke_stops_it(api_client, tenant):
    # when
    created = api_client.post("/api/v1/api-keys/", {"name": "pipeline"}, format="json")
    # then
    assert created.status_code == 201
    raw = created.json()["key"]
    assert raw.startswith(f"ccg_{created.json()['prefix']}_")
    listed = api_client.get("/api/v1/api-keys/").json()
    assert listed["count"] == 2
    assert all("key" not in item for item in listed["results"])
    new_client = APIClient(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    assert new_client.get("/api/v1/tenant/").status_code == 200
    revoked = api_client.delete(f"/api/v1/api-keys/{created.json()['id']}/")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert new_client.get("/api/v1/tenant/").status_code == 401
    assert AuditEvent.objects.filter(tenant=tenant, action="api_key.revoked").count() == 1


def test_validation_errors_use_one_format_and_write_nothing(api_client, tenant):
    response = api_client.post("/api/v1/api-keys/", {"name": "", "role": "owner"}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert set(error["fields"]) == {"name", "role"}
    assert ApiKey.objects.for_tenant(tenant).count() == 1


def test_member_key_cannot_manage_keys(tenant, owner):
    raw = services.api_key_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, name="ro", role=Role.MEMBER
    ).raw_key
    client = APIClient(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    response = client.post("/api/v1/api-keys/", {"name": "escalate"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert ApiKey.objects.for_tenant(tenant).count() == 1


def test_session_auth_needs_csrf_and_honours_tenant_header(owner, tenant, other_tenant):
    MembershipFactory(user=owner, tenant=other_tenant, role=Role.MEMBER)
    client = APIClient(enforce_csrf_checks=True)
    client.login(email=owner.email, password=PASSWORD)
    assert (
        client.get("/api/v1/tenant/", HTTP_X_TENANT=str(other_tenant.pk)).json()["role"] == "member"
    )
    assert client.post("/api/v1/api-keys/", {"name": "x"}, format="json").status_code == 403


def test_members_list_is_paginated(api_client, tenant):
    for _ in range(3):
        MembershipFactory(tenant=tenant)
    page = api_client.get("/api/v1/members/?limit=2").json()
    assert page["count"] == 4
    assert len(page["results"]) == 2
    assert page["next"] is not None


def test_invitation_api(api_client, tenant):
    created = api_client.post(
        "/api/v1/invitations/", {"email": "a@example.org", "role": "member"}, format="json"
    )
    assert created.status_code == 201
    revoked = api_client.delete(f"/api/v1/invitations/{created.json()['id']}/")
    assert revoked.json()["revoked_at"] is not None


def test_throttling_answers_429_in_the_error_format(api_client, settings):
    from django.core.cache import cache
    from rest_framework.settings import api_settings

    cache.clear()
    rates = {**api_settings.DEFAULT_THROTTLE_RATES, "tenant": "3/min"}
    from ccgsc_site.api_support import TenantRateThrottle

    original = TenantRateThrottle.THROTTLE_RATES
    TenantRateThrottle.THROTTLE_RATES = rates
    try:
        codes = [api_client.get("/api/v1/tenant/").status_code for _ in range(4)]
    finally:
        TenantRateThrottle.THROTTLE_RATES = original
        cache.clear()
    assert codes == [200, 200, 200, 429]


def test_openapi_schema_and_docs_are_served_offline(client):
    schema = client.get(reverse("api_schema"))
    assert schema.status_code == 200
    assert b"/api/v1/api-keys/" in schema.content
    docs = client.get(reverse("api_docs"))
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "http://" not in html.replace("http://testserver", "")
    assert "https://" not in html
