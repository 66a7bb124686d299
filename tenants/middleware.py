"""Resolves the signed-in user's active tenant once per request, lazily."""

from __future__ import annotations

from collections.abc import Callable

from django.http import Http404, HttpRequest, HttpResponse
from django.utils.functional import SimpleLazyObject

from tenants.models import Membership
from tenants.selectors import membership_list_for_user

SESSION_KEY = "active_tenant_id"


def active_membership(request: HttpRequest) -> Membership | None:
    """The membership chosen in this session, else the user's first one, else None."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not hasattr(user, "memberships"):
        return None
    memberships = membership_list_for_user(user=user)
    chosen = request.session.get(SESSION_KEY)
    if chosen:
        membership = memberships.filter(tenant_id=chosen).first()
        if membership is not None:
            return membership
    return memberships.first()


class ActiveTenantMiddleware:
    """Sets ``request.active_membership`` (lazy)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.active_membership = SimpleLazyObject(lambda: active_membership(request))  # type: ignore[attr-defined]
        return self.get_response(request)


def active_membership_or_404(request: HttpRequest) -> Membership:
    """The signed-in user's active membership; 404 when they belong to no tenant."""
    membership = request.active_membership  # type: ignore[attr-defined]
    if not membership:
        raise Http404("You do not belong to any tenant.")
    return membership
