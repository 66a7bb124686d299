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
from django.urls import Resolver404, resolve
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

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


# Everything under /api/ answers the API's error format, even where no API view ran: unknown
# routes, ids the URL converters refuse, and errors raised before or outside DRF.
API_PREFIX = "/api/"


def _api_error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


@csrf_exempt
def api_not_found(request: HttpRequest) -> JsonResponse:
    """No API route matches: name the likely fix when only the trailing slash is missing."""
    message = f"No API route {request.path}."
    if not request.path.endswith("/"):
        try:
            match = resolve(request.path + "/")
        except Resolver404:
            match = None
        if match is not None and match.url_name != "api_not_found":
            message = f"No API route {request.path}; did you mean {request.path}/ ?"
    return _api_error("not_found", message, 404)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """400 outside a view (e.g. a body over the upload limit): JSON under /api/."""
    if _is_api(request):
        return _api_error("bad_request", "Bad request.", 400)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """403 outside a view: JSON under /api/."""
    if _is_api(request):
        return _api_error("permission_denied", "Permission denied.", 403)
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404 outside a view: JSON under /api/."""
    if _is_api(request):
        return _api_error("not_found", "Not found.", 404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """500: JSON under /api/, so clients parse one format whatever went wrong."""
    if _is_api(request):
        return _api_error("server_error", "Internal server error.", 500)
    return defaults.server_error(request)
