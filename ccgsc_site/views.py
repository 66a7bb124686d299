"""Site-wide pages: landing, health and readiness."""

from __future__ import annotations

import time
import uuid

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from tenants.tiers import POLICIES


def landing(request: HttpRequest) -> HttpResponse:
    """What the platform is, for tenants and contributors."""
    return render(request, "landing.html", {"policies": POLICIES.values()})


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers."""
    return JsonResponse({"status": "ok"})


def _check(name: str, probe) -> dict[str, object]:  # noqa: ANN001
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure, whatever its type
        return {"name": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"name": name, "ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _redis() -> None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def _storage() -> None:
    name = default_storage.save(f"readyz/{uuid.uuid4().hex}", ContentFile(b"ok"))
    default_storage.delete(name)


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: database, Redis (when configured) and storage are reachable."""
    checks = [_check("database", _database), _check("storage", _storage)]
    if settings.REDIS_URL:
        checks.append(_check("redis", _redis))
    ready = all(check["ok"] for check in checks)
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
