"""Admin base: admins work across tenants on purpose, so their querysets are unscoped."""

from __future__ import annotations

from django.contrib import admin
from django.db import models
from django.http import HttpRequest

from tenants.scoping import TenantScopedQuerySet


def _unscoped(queryset: models.QuerySet) -> models.QuerySet:
    return queryset.unscoped() if isinstance(queryset, TenantScopedQuerySet) else queryset


class UnscopedAdmin(admin.ModelAdmin):
    """ModelAdmin whose lists, lookups and choice fields see every tenant's rows."""

    list_per_page = 50

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return _unscoped(super().get_queryset(request))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):  # noqa: ANN001, ANN201
        related = db_field.remote_field.model
        kwargs.setdefault("queryset", _unscoped(related._default_manager.all()))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class ReadOnlyAdmin(UnscopedAdmin):
    """For append-only records (ledger, audit log): viewable, never editable."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
