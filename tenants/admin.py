"""Django admin for tenants, users, memberships, invitations, API keys and the audit log."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from tenants import services
from tenants.admin_base import ReadOnlyAdmin, UnscopedAdmin
from tenants.models import ApiKey, AuditEvent, Invitation, Membership, Tenant, TenantStatus, User


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ("user",)
    fields = ("user", "role", "created_at")
    readonly_fields = ("created_at",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).unscoped()


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "tier", "status", "created_at")
    list_filter = ("tier", "status")
    search_fields = ("name", "slug", "memberships__user__email")
    readonly_fields = ("id", "created_at")
    inlines = [MembershipInline]

    actions = ["suspend", "reactivate"]

    @admin.action(description="Suspend selected tenants")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            services.tenant_set_status(
                tenant=tenant,
                status=TenantStatus.SUSPENDED,
                actor=request.user,
                reason="admin action",
            )
        self.message_user(request, f"Suspended {queryset.count()} tenant(s).", messages.SUCCESS)

    @admin.action(description="Reactivate selected tenants")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            services.tenant_set_status(
                tenant=tenant, status=TenantStatus.ACTIVE, actor=request.user, reason="admin action"
            )
        self.message_user(request, f"Reactivated {queryset.count()} tenant(s).", messages.SUCCESS)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("email", "is_staff", "is_active", "date_joined", "last_login")
    search_fields = ("email",)
    ordering = ("email",)
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)

    def save_model(self, request, obj, form, change) -> None:  # noqa: ANN001
        obj.username = obj.email
        super().save_model(request, obj, form, change)


@admin.register(Membership)
class MembershipAdmin(UnscopedAdmin):
    list_display = ("user", "tenant", "role", "created_at")
    list_filter = ("role",)
    search_fields = ("user__email", "tenant__name")
    raw_id_fields = ("user", "tenant")


@admin.register(Invitation)
class InvitationAdmin(UnscopedAdmin):
    list_display = (
        "email",
        "tenant",
        "role",
        "created_at",
        "expires_at",
        "accepted_at",
        "revoked_at",
    )
    list_filter = ("role",)
    search_fields = ("email", "tenant__name")
    readonly_fields = ("token_hash", "created_at", "accepted_at", "accepted_by", "invited_by")
    raw_id_fields = ("tenant",)


@admin.register(ApiKey)
class ApiKeyAdmin(UnscopedAdmin):
    list_display = ("prefix", "name", "tenant", "role", "created_at", "last_used_at", "revoked_at")
    list_filter = ("role",)
    search_fields = ("prefix", "name", "tenant__name")
    readonly_fields = ("prefix", "key_hash", "created_at", "created_by", "last_used_at")
    raw_id_fields = ("tenant",)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "action", "target", "tenant", "actor")
    list_filter = ("action",)
    search_fields = ("action", "target", "tenant__name", "actor__email")
    date_hierarchy = "created_at"
