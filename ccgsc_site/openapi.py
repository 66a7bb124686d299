"""The OpenAPI schema as the API behaves: paginated lists and documented error bodies.

Every operation lists the errors it can answer, all in the one format of
``ccgsc_site.api_support.exception_handler``: 400 where a request is validated (a body, or a
service refusing the action), 401 and 403 where authentication is required, 404 where a tenant or
an object is resolved, 415 where a body in another media type is refused, and 429 wherever a throttle applies (including too many failed API keys).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework.permissions import AllowAny

ERROR_COMPONENT = "Error"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every API error: a stable code, a message for people, and per-field "
    "messages for invalid input.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "example": "not_found"},
                "message": {"type": "string", "example": "Not found."},
                "fields": {
                    "type": "object",
                    "additionalProperties": True,
                    "description": "Invalid input: field name → messages.",
                },
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
ERROR_DESCRIPTIONS = {
    "400": "Invalid input, or the action is not possible in the object's state.",
    "401": "No valid credentials (session or `Authorization: Api-Key <key>`).",
    "403": "Authenticated, but the role, tenant status or CSRF check does not allow it.",
    "404": "No such object in this tenant (or no such tenant for this user).",
    "415": "The request body is not in a media type this operation reads.",
    "429": "Throttled; `Retry-After` says when to try again.",
}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's schema plus the error responses every operation can give."""

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self._error_codes():
            responses.setdefault(code, self._error_response(code))
        return responses

    def _error_codes(self) -> list[str]:
        view = self.view
        public = any(isinstance(p, AllowAny) for p in view.get_permissions())
        codes = []
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            codes.append("400")
        if self.method in ("POST", "PUT", "PATCH"):
            codes.append("415")
        if not public:
            codes += ["401", "403"]
        if not public and (self._resolves_tenant() or "{" in self.path):
            codes.append("404")
        if view.get_throttles() or not public:
            codes.append("429")
        return codes

    def _resolves_tenant(self) -> bool:
        from ccgsc_site.api import TenantApi

        return isinstance(self.view, TenantApi)

    def _error_response(self, code: str) -> dict[str, Any]:
        component = ResolvedComponent(
            name=ERROR_COMPONENT,
            type=ResolvedComponent.SCHEMA,
            schema=ERROR_SCHEMA,
            object=ERROR_COMPONENT,
        )
        self.registry.register_on_missing(component)
        response: dict[str, Any] = {
            "description": ERROR_DESCRIPTIONS[code],
            "content": {"application/json": {"schema": component.ref}},
        }
        if code == "429":
            response["headers"] = RETRY_AFTER
        return response
