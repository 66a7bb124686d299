"""The service-backed suite: real PostgreSQL, Redis, Daphne and a Celery worker."""

from __future__ import annotations

import email
import json
import time
import urllib.request

import pytest
from django.db import connection

from tenants import services
from tenants.roles import Role

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_suite_runs_on_postgresql():
    assert connection.vendor == "postgresql"


def test_daphne_serves_health_readiness_and_the_api(daphne, tenant, owner):
    raw = services.api_key_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, name="live"
    ).raw_key
    with urllib.request.urlopen(daphne.url + "/readyz", timeout=10) as response:
        ready = json.load(response)
    assert ready["status"] == "ok"
    assert {c["name"] for c in ready["checks"]} == {"database", "storage", "redis"}
    request = urllib.request.Request(
        daphne.url + "/api/v1/tenant/", headers={"Authorization": f"Api-Key {raw}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["id"] == str(tenant.pk)


def test_celery_worker_sends_invitation_email(celery_worker, tenant, owner):
    created = services.invitation_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, email="remote@example.org"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        files = (
            list(celery_worker.mail_dir.glob("*.log")) if celery_worker.mail_dir.exists() else []
        )
        if files:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no e-mail from the worker:\n{celery_worker.log_tail()}")
    message = email.message_from_string(files[0].read_text())
    body = message.get_payload(decode=True).decode()
    assert message["To"] == "remote@example.org"
    assert created.raw_token in body
