"""Health endpoints, settings by environment, security headers and the admin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.apps import apps
from django.contrib import admin
from django.urls import reverse

from tests.factories import UserFactory

ROOT = Path(__file__).resolve().parents[2]


def test_healthz(client):
    response = client.get("/healthz")
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_each_dependency(client, settings):
    body = client.get("/readyz").json()
    names = {check["name"]: check["ok"] for check in body["checks"]}
    assert names["database"] is True
    assert names["storage"] is True
    assert body["status"] == "ok"


@pytest.mark.django_db
def test_readyz_is_503_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    redis_check = next(c for c in response.json()["checks"] if c["name"] == "redis")
    assert redis_check["ok"] is False
    assert "Error" in redis_check["error"]


def _settings_dump(env: dict[str, str], *names: str) -> list[str]:
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='ccgsc_site.settings'; django.setup();"
        "from django.conf import settings as s;" + "".join(f"print(repr({n}));" for n in names)
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "AWS_", "DJANGO_", "CCGSC_"))
    }
    env.update(extra)
    return env


def test_embedded_default_needs_no_services(tmp_path):
    values = _settings_dump(
        _clean_env(CCGSC_VAR_DIR=str(tmp_path)),
        "s.DATABASES['default']['ENGINE']",
        "s.CHANNEL_LAYERS['default']['BACKEND']",
        "s.CELERY_TASK_ALWAYS_EAGER",
        "s.STORAGES['default']['BACKEND']",
    )
    assert values == [
        "'django.db.backends.sqlite3'",
        "'channels.layers.InMemoryChannelLayer'",
        "True",
        "'django.core.files.storage.FileSystemStorage'",
    ]


def test_production_wiring_from_environment(tmp_path):
    values = _settings_dump(
        _clean_env(
            CCGSC_VAR_DIR=str(tmp_path),
            DATABASE_URL="postgres://u@db.internal:5432/ccgsc",
            REDIS_URL="redis://cache.internal:6379/0",
            AWS_STORAGE_BUCKET_NAME="ccgsc-artifacts",
        ),
        "s.DATABASES['default']['ENGINE']",
        "s.CHANNEL_LAYERS['default']['BACKEND']",
        "s.CELERY_BROKER_URL",
        "s.STORAGES['default']['BACKEND']",
    )
    assert values == [
        "'django.db.backends.postgresql'",
        "'ccgsc_site.redis_pools.BlockingRedisChannelLayer'",
        "'redis://cache.internal:6379/0'",
        "'storages.backends.s3.S3Storage'",
    ]


def test_check_deploy_is_clean_with_production_variables(tmp_path):
    env = _clean_env(
        CCGSC_VAR_DIR=str(tmp_path),
        CCGSC_ENV="production",
        DJANGO_SECRET_KEY="x" * 30 + "-production-secret-with-plenty-of-entropy-QWERTY-12345",
        DJANGO_ALLOWED_HOSTS="ccgsc.example.org",
        DATABASE_URL="sqlite:///" + str(tmp_path / "db.sqlite3"),
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret(tmp_path):
    env = _clean_env(CCGSC_VAR_DIR=str(tmp_path), CCGSC_ENV="production")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set in production" in result.stderr


@pytest.mark.django_db
def test_pages_send_security_headers(client):
    response = client.get(reverse("landing"))
    csp = response["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "'wasm-unsafe-eval'" in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
def test_landing_page_explains_the_platform_without_external_assets(client):
    html = client.get(reverse("landing")).content.decode()
    assert "Start as a tenant" in html
    assert "Contribute compute" in html
    assert "https://" not in html
    assert "http://" not in html


def test_every_model_is_registered_in_admin():
    ours = [m for m in apps.get_models() if m._meta.app_label in {"tenants", "jobs", "billing"}]
    missing = [m.__name__ for m in ours if not admin.site.is_registered(m)]
    assert not missing, f"register in admin: {missing}"


@pytest.mark.django_db
def test_admin_changelists_and_add_forms_render(client, tenant, other_tenant):
    superuser = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(superuser)
    for model, model_admin in admin.site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        changelist = client.get(reverse("admin:{}_{}_changelist".format(*info)))
        assert changelist.status_code == 200, info
        if model_admin.search_fields:
            assert (
                client.get(reverse("admin:{}_{}_changelist".format(*info)), {"q": "x"}).status_code
                == 200
            )
        first = model._base_manager.first()
        if first is not None:
            assert (
                client.get(reverse("admin:{}_{}_change".format(*info), args=[first.pk])).status_code
                == 200
            )
