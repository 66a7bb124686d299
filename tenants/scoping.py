"""Fail-closed tenant scoping for every tenant-owned model.

A query on a tenant-owned model must say which tenant it is for (``for_tenant``), come from a
related manager of an object that was itself loaded in scope, or say ``unscoped()`` out loud.
Anything else raises ``UnscopedQueryError`` when the query runs, so a forgotten filter fails in
tests instead of leaking another tenant's rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from django.db import models

if TYPE_CHECKING:
    from tenants.models import Tenant


class UnscopedQueryError(RuntimeError):
    """A tenant-owned model was queried without a tenant."""


class TenantScopedQuerySet(models.QuerySet):
    """QuerySet that refuses to run until it is scoped to a tenant or explicitly unscoped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scope_declared = False

    def _clone(self) -> Self:
        clone = super()._clone()
        clone._scope_declared = self._scope_declared
        return clone

    def for_tenant(self, tenant: Tenant) -> Self:
        """Rows of ``tenant`` only."""
        if tenant is None or getattr(tenant, "pk", None) is None:
            raise UnscopedQueryError(f"{self.model.__name__}: for_tenant() needs a saved tenant")
        clone = self.filter(tenant=tenant)
        clone._scope_declared = True
        return clone

    def unscoped(self) -> Self:
        """Every tenant's rows: for admin, sweepers and dispatch, which cross tenants on purpose."""
        clone = self._chain()
        clone._scope_declared = True
        return clone

    def _check_scope(self) -> None:
        # Related managers (job.tasks.all()) carry the parent instance as a hint: the parent was
        # loaded in scope, so its children are too.
        if self._scope_declared or "instance" in self._hints:
            return
        raise UnscopedQueryError(
            f"{self.model.__name__} queried without a tenant: use .for_tenant(tenant) "
            "or, where crossing tenants is the point, .unscoped()"
        )

    def _fetch_all(self) -> None:
        if self._result_cache is None:
            self._check_scope()
        super()._fetch_all()

    def iterator(self, *args: Any, **kwargs: Any):  # noqa: ANN201 - same as Django's
        self._check_scope()
        return super().iterator(*args, **kwargs)

    def count(self) -> int:
        self._check_scope()
        return super().count()

    def exists(self) -> bool:
        self._check_scope()
        return super().exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._check_scope()
        return super().aggregate(*args, **kwargs)

    def update(self, **kwargs: Any) -> int:
        self._check_scope()
        return super().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        self._check_scope()
        return super().delete()


class TenantScopedManager(models.Manager.from_queryset(TenantScopedQuerySet)):  # type: ignore[misc]
    """Default manager of tenant-owned models."""


class TenantOwnedModel(models.Model):
    """Abstract base: a non-null tenant and the fail-closed manager."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")

    objects = TenantScopedManager()

    class Meta:
        abstract = True
        # Forward lookups (assignment.task) and deletion cascades use Django's plain base manager:
        # the object holding the FK was itself loaded in scope.
