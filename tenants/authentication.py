"""API authentication by tenant API key: ``Authorization: Api-Key <key>``."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from ccgsc_site.throttling import API_KEY_PER_IP, client_ip
from tenants.services import api_key_authenticate_unscoped

KEYWORD = "Api-Key"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Authenticates a request as its tenant; ``request.auth`` is the ApiKey.

    Failed attempts are counted per client address; past the limit, every API-key attempt from
    that address is refused with 429 (without checking the key) until the window ends.
    """

    def authenticate(self, request):  # noqa: ANN201 - DRF's signature
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        keyword, _, raw_key = header.partition(" ")
        if keyword != KEYWORD:
            return None
        address = client_ip(request)
        wait_seconds = API_KEY_PER_IP.retry_after(address)
        if wait_seconds is not None:
            raise exceptions.Throttled(
                wait=wait_seconds, detail="Too many failed API-key attempts from your address."
            )
        api_key = api_key_authenticate_unscoped(raw_key=raw_key.strip())
        if api_key is None:
            API_KEY_PER_IP.record(address)
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        # The key acts for its tenant, not for a person; created_by stays in the audit log.
        return (ApiKeyUser(api_key), api_key)

    def authenticate_header(self, request) -> str:  # noqa: ANN001
        return KEYWORD


class ApiKeyUser(AnonymousUser):
    """The principal of an API-key request: authenticated, bound to one tenant."""

    def __init__(self, api_key) -> None:  # noqa: ANN001
        super().__init__()
        self.api_key = api_key

    @property
    def is_authenticated(self) -> bool:  # type: ignore[override]
        return True

    @property
    def is_anonymous(self) -> bool:  # type: ignore[override]
        return False

    def __str__(self) -> str:
        return f"api-key:{self.api_key.prefix}"


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents the API-key header in the OpenAPI schema."""

    target_class = "tenants.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):  # noqa: ANN001, ANN201
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <key>`; create keys on the API keys page.",
        }
