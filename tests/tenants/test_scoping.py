"""Fail-closed tenant scoping."""

from __future__ import annotations

import pytest

from tenants.models import ApiKey, Membership
from tenants.scoping import UnscopedQueryError

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "run",
    [
        lambda: list(Membership.objects.all()),
        lambda: Membership.objects.count(),
        lambda: Membership.objects.filter(role="owner").exists(),
        lambda: Membership.objects.get(role="owner"),
        lambda: Membership.objects.update(role="member"),
        lambda: Membership.objects.all().delete(),
        lambda: list(Membership.objects.iterator()),
        lambda: ApiKey.objects.first(),
    ],
)
def test_unscoped_queries_fail_closed(tenant, run):
    with pytest.raises(UnscopedQueryError):
        run()
    assert Membership.objects.unscoped().filter(role="owner").count() == 1


def test_scoped_queries_see_only_their_tenant(tenant, other_tenant):
    assert Membership.objects.for_tenant(tenant).count() == 1
    assert Membership.objects.for_tenant(tenant).get().tenant == tenant
    assert Membership.objects.unscoped().count() == 2


def test_related_managers_of_scoped_objects_work(tenant):
    assert tenant.memberships.count() == 1


def test_for_tenant_needs_a_saved_tenant():
    with pytest.raises(UnscopedQueryError):
        Membership.objects.for_tenant(None)
