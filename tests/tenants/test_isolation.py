"""Walks the whole URL configuration and proves no endpoint serves another tenant's objects.

Every URL pattern with a path parameter is found automatically. A parameter names an object;
``OBJECT_MAKERS`` says how to create one in *another* tenant. A new endpoint with a new kind of
parameter makes this test fail until its maker is added, so nothing tenant-scoped goes untested.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.forms.models import model_to_dict
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from tenants import services
from tenants.roles import Role
from tests.factories import PASSWORD, MembershipFactory

pytestmark = pytest.mark.django_db

# Routes that are not tenant-scoped on purpose: admin (staff see every tenant), static files,
# and kernel modules and FL model weights, which workers of any tenant fetch by content hash with a
# worker token.
NOT_TENANT_SCOPED_PREFIXES = (
    "admin/",
    "static/",
    "media/",
    "^kernels/",
    "^weights/",
    # FL update uploads: worker-token routes, scoped to the token's own participations (a 404
    # otherwise), tested in tests/jobs/test_fl_rounds.py.
    "fl/uploads/",
    # FL worker downloads: public shards of running jobs (never private data) and training
    # kernels by hash, for any worker token, tested in tests/jobs/test_fl_shards.py.
    "fl/shards/",
    "^fl/kernels/",
    # SCAFFOLD control variates of running jobs by hash, for any worker token, as the weights;
    # tested in tests/jobs/test_fl_rounds_strategies.py.
    "^fl/controls/",
)
# Path parameters that are capabilities or nonces, not objects: password-reset and invitation
# tokens, and the test-mode checkout id (it only ever credits the caller's own tenant).
NOT_TENANT_SCOPED_PARAMS = {"uidb64", "token", "session_id"}
# Parameters that select a representation of the object named by the other parameters.
FIXED_PARAMS = {"fmt": "json"}


def _membership(tenant, owner):  # noqa: ANN001, ANN202
    return MembershipFactory(tenant=tenant, role=Role.MEMBER)


def _invitation(tenant, owner):  # noqa: ANN001, ANN202
    return services.invitation_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, email="victim@example.org"
    ).invitation


def _api_key(tenant, owner):  # noqa: ANN001, ANN202
    return services.api_key_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, name="v"
    ).api_key


OBJECT_MAKERS: dict[str, Callable] = {
    "membership_id": _membership,
    "invitation_id": _invitation,
    "api_key_id": _api_key,
}


def register(name: str) -> Callable[[Callable], Callable]:
    """Let later test modules add makers for the objects of their apps."""

    def decorator(maker: Callable) -> Callable:
        OBJECT_MAKERS[name] = maker
        return maker

    return decorator


def _walk(patterns, prefix: str = "") -> Iterator[tuple[str, URLPattern]]:  # noqa: ANN001
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, route)
        else:
            yield route, entry


def _params(pattern: URLPattern) -> list[str]:
    """Named parameters of a route, whether written with path() or re_path()."""
    converters = getattr(pattern.pattern, "converters", None)
    names = list(converters) if converters else list(pattern.pattern.regex.groupindex)
    return [name for name in names if name not in NOT_TENANT_SCOPED_PARAMS]


def _scoped_routes() -> list[tuple[str, URLPattern, list[str]]]:
    routes = []
    for route, pattern in _walk(get_resolver().url_patterns):
        if route.startswith(NOT_TENANT_SCOPED_PREFIXES) or route.lstrip("^").startswith(
            NOT_TENANT_SCOPED_PREFIXES
        ):
            continue
        params = _params(pattern)
        if any(p not in FIXED_PARAMS for p in params):
            routes.append((route, pattern, params))
    return routes


def _import_app_makers() -> None:
    # App test modules register their makers on import (jobs, billing...).
    import importlib

    for module in ("tests.jobs.isolation_makers", "tests.billing.isolation_makers"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise


def test_every_tenant_scoped_url_refuses_other_tenants_objects(
    owner, tenant, other_tenant, other_owner
):
    _import_app_makers()
    routes = _scoped_routes()
    assert routes, "no tenant-scoped routes found: the walker is broken"
    unknown = sorted(
        {
            p
            for _, _, params in routes
            for p in params
            if p not in OBJECT_MAKERS and p not in FIXED_PARAMS
        }
    )
    unnamed = [route for route, pattern, _ in routes if not pattern.name]
    assert not unnamed, f"name these routes so the walker can reverse them: {unnamed}"
    assert not unknown, f"add an OBJECT_MAKERS entry for path parameters {unknown}"

    session = APIClient()
    session.login(email=owner.email, password=PASSWORD)
    api_key = services.api_key_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, name="walker", role=Role.ADMIN
    ).raw_key
    keyed = APIClient(HTTP_AUTHORIZATION=f"Api-Key {api_key}")

    checked = 0
    for route, pattern, params in routes:
        objects = {
            name: OBJECT_MAKERS[name](other_tenant, other_owner)
            for name in params
            if name in OBJECT_MAKERS
        }
        kwargs = {name: str(obj.pk) for name, obj in objects.items()}
        kwargs.update({name: FIXED_PARAMS[name] for name in params if name in FIXED_PARAMS})
        url = reverse(pattern.name, kwargs=kwargs)
        before = {name: model_to_dict(obj) for name, obj in objects.items()}
        clients = [session] + ([keyed] if url.startswith("/api/") else [])
        for client in clients:
            for method in ("get", "post", "patch", "put", "delete"):
                response = getattr(client, method)(url, {}, format="json")
                assert response.status_code in (404, 405), (
                    f"{method.upper()} {url} ({pattern.name}) answered {response.status_code} "
                    "for another tenant's object"
                )
                checked += 1
        for name, obj in objects.items():
            fresh = type(obj)._base_manager.get(pk=obj.pk)
            assert model_to_dict(fresh) == before[name], f"{route} changed another tenant's {name}"
    assert checked >= len(routes) * 5
