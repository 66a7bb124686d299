"""The one base class of tenant-scoped APIs."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from ccgsc_site.api_support import Pagination
from tenants.authentication import ApiKeyUser
from tenants.middleware import SESSION_KEY
from tenants.models import Tenant
from tenants.roles import Action, role_allows
from tenants.selectors import membership_get_for_user, membership_list_for_user

TENANT_HEADER = "X-Tenant"


class TenantApi(APIView):
    """Resolves ``self.tenant`` and ``self.role`` once, before any handler runs.

    Subclasses declare ``actions`` (HTTP method → role action) and call selectors and services
    with ``self.tenant``. They never build querysets themselves: ``get_queryset`` is refused.
    """

    actions: dict[str, str] = {}
    # Read by ``paginated`` and by the schema, which documents list responses as this envelope.
    pagination_class = Pagination
    tenant: Tenant
    role: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "get_queryset" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__}: tenant APIs read through selectors that take the tenant; "
                "do not override get_queryset"
            )

    def paginated(self, queryset: Any, serializer_class: type[BaseSerializer]) -> Response:
        """One page of ``queryset`` in the standard envelope (count, next, previous, results)."""
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(queryset, self.request, self)
        return paginator.get_paginated_response(serializer_class(page, many=True).data)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.tenant, self.role = resolve_tenant(request)
        action = self.actions.get(request.method or "GET", Action.VIEW)
        if not role_allows(self.role, action):
            raise exceptions.PermissionDenied(
                f"Your role ({self.role}) may not {action.replace('_', ' ')}."
            )
        if not self.tenant.is_active and request.method not in ("GET", "HEAD", "OPTIONS"):
            raise exceptions.PermissionDenied("This tenant is suspended; contact support.")


def resolve_tenant(request: Request) -> tuple[Tenant, str]:
    """The tenant a request acts for and the role it acts with; Http404 on any mismatch."""
    user = request.user
    if isinstance(user, ApiKeyUser):
        return user.api_key.tenant, user.api_key.role
    requested = request.headers.get(TENANT_HEADER) or request.session.get(SESSION_KEY)
    if requested:
        membership = membership_get_for_user(user=user, tenant_id=requested)
    else:
        membership = membership_list_for_user(user=user).first()
        if membership is None:
            raise Http404("You do not belong to any tenant.")
    return membership.tenant, membership.role


def request_person(request: Request) -> Any:
    """The human behind a request, or None when an API key makes it."""
    user = request.user
    return None if isinstance(user, ApiKeyUser) else user
