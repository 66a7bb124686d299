"""API plumbing that DRF loads from settings: pagination, throttling and the error format.

Kept apart from ``ccgsc_site.api`` because DRF imports these while ``rest_framework.views`` is
still loading.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, pagination, status, throttling
from rest_framework.response import Response

from ccgsc_site.throttling import client_ip


class Pagination(pagination.LimitOffsetPagination):
    default_limit = 50
    max_limit = 200


class ClientIpMixin:
    """Throttle by the client address behind trusted proxies only.

    DRF's own ``get_ident`` believes any ``X-Forwarded-For`` a client sends, which lets a client
    pick a fresh identity per request.
    """

    def get_ident(self, request: Any) -> str:
        return client_ip(request)


class AnonRateThrottle(ClientIpMixin, throttling.AnonRateThrottle):
    """Anonymous requests, per client address."""


class TenantRateThrottle(throttling.SimpleRateThrottle):
    """One budget per tenant for API keys, per user for sessions."""

    scope = "tenant"

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        user = request.user
        api_key = getattr(user, "api_key", None)
        if api_key is not None:
            ident = f"tenant:{api_key.tenant_id}"
        elif user and user.is_authenticated:
            ident = f"user:{user.pk}"
        else:
            return None
        return self.cache_format % {"scope": self.scope, "ident": ident}


def _error(code: str, message: str, http_status: int, fields: Any = None) -> Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if fields:
        body["error"]["fields"] = fields
    return Response(body, status=http_status)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every API error as ``{"error": {"code", "message", "fields"?}}``."""
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else None
        message = "; ".join(exc.messages) if not fields else "Invalid input."
        return _error("invalid", message, status.HTTP_400_BAD_REQUEST, fields)
    if isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    if isinstance(exc, Http404):
        return _error("not_found", "Not found.", status.HTTP_404_NOT_FOUND)
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        fields = detail if isinstance(detail, dict) else {"non_field_errors": detail}
        return _error("invalid", "Invalid input.", response.status_code, fields)
    if isinstance(exc, exceptions.APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "error"
        body = _error(str(code), str(exc.detail), response.status_code)
        for header in ("Retry-After", "WWW-Authenticate", "Allow"):
            if header in response:
                body[header] = response[header]
        return body
    return response
