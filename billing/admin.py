"""Billing admin: the ledger is read-only; operations post new entries through services."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils.html import format_html

from billing.contracts import enterprise_subscription_start
from billing.metering import tenant_balance_cents
from billing.models import (
    STRIPE_EVENT_ATTENTION,
    Account,
    BillingProfile,
    Checkout,
    EntryKind,
    JournalEntry,
    Payout,
    PayoutStatus,
    Posting,
    StripeEvent,
    UsageRecord,
)
from billing.money import format_cents
from billing.operations import balance_adjust, refund_issue
from billing.payouts import payout_decide
from tenants.admin import TenantAdmin
from tenants.admin_base import ReadOnlyAdmin, UnscopedAdmin
from tenants.models import Tenant


class AmountReasonForm(forms.Form):
    amount_cents = forms.IntegerField(help_text="In cents; negative to debit (adjustments only).")
    reason = forms.CharField(max_length=300)
    promotional = forms.BooleanField(
        required=False, help_text="Promotional credit rather than an adjustment."
    )


class RefundForm(forms.Form):
    amount_cents = forms.IntegerField(min_value=1)
    reason = forms.CharField(max_length=300)


class PostingInline(admin.TabularInline):
    model = Posting
    extra = 0
    can_delete = False
    readonly_fields = ("account", "amount_cents", "currency")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "currency", "tenant", "contributor", "balance_cents")
    list_filter = ("kind", "currency")
    search_fields = ("tenant__name", "contributor__user__email")


@admin.register(JournalEntry)
class JournalEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "kind", "tenant", "memo", "idempotency_key", "external_ref")
    list_filter = ("kind",)
    search_fields = ("idempotency_key", "memo", "external_ref", "tenant__name")
    inlines = [PostingInline]
    change_form_template = "admin/billing/journalentry/change_form.html"

    def get_urls(self):  # noqa: ANN201
        return [
            path(
                "<int:entry_id>/refund/",
                self.admin_site.admin_view(self.refund_view),
                name="billing_journalentry_refund",
            ),
            *super().get_urls(),
        ]

    def refund_view(self, request: HttpRequest, entry_id: int) -> HttpResponse:
        entry = get_object_or_404(JournalEntry, pk=entry_id, kind=EntryKind.TOPUP)
        form = RefundForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                refund_issue(topup=entry, actor=request.user, **form.cleaned_data)
            except ValidationError as exc:
                form.add_error(None, exc.messages)
            else:
                self.message_user(request, "Refund posted.", messages.SUCCESS)
                return redirect(reverse("admin:billing_journalentry_change", args=[entry.pk]))
        return render(
            request,
            "admin/billing/operation.html",
            {
                "title": f"Refund top-up {entry.pk}",
                "form": form,
                "opts": self.model._meta,
                "subject": entry,
            },
        )


@admin.register(Posting)
class PostingAdmin(ReadOnlyAdmin):
    list_display = ("id", "entry", "account", "amount_cents", "currency")
    list_filter = ("currency", "account__kind")
    search_fields = ("entry__idempotency_key",)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "tenant",
        "job",
        "round_number",
        "kind",
        "quantity",
        "amount_cents",
        "status",
    )
    list_filter = ("kind", "status")
    search_fields = ("tenant__name", "idempotency_key")


class NeedsAttentionFilter(admin.SimpleListFilter):
    title = "needs attention"
    parameter_name = "attention"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [("yes", "Flagged or failed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(status__in=STRIPE_EVENT_ATTENTION)
        return queryset


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "type", "event_id", "status", "outcome", "error")
    list_filter = (NeedsAttentionFilter, "status", "type")
    search_fields = ("event_id", "type", "error")


@admin.register(Checkout)
class CheckoutAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "tenant",
        "session_id",
        "amount_cents",
        "currency",
        "status",
        "problem",
    )
    list_filter = ("status", "test_mode")
    search_fields = ("session_id", "payment_intent", "tenant__name")


@admin.register(BillingProfile)
class BillingProfileAdmin(UnscopedAdmin):
    list_display = (
        "tenant",
        "stripe_customer_id",
        "stripe_subscription_id",
        "sla_uptime_percent",
        "contract_reference",
    )
    search_fields = ("tenant__name", "stripe_customer_id")
    raw_id_fields = ("tenant",)

    actions = ["start_enterprise"]

    @admin.action(description="Start the FL Enterprise contract in Stripe")
    def start_enterprise(self, request: HttpRequest, queryset: QuerySet[BillingProfile]) -> None:
        for profile in queryset:
            try:
                enterprise_subscription_start(
                    tenant=profile.tenant,
                    actor=request.user,
                    email=request.user.email,
                    price_id=settings.STRIPE_ENTERPRISE_PRICE_ID,
                )
            except ValidationError as exc:
                self.message_user(
                    request, f"{profile.tenant}: {' '.join(exc.messages)}", messages.ERROR
                )
            else:
                self.message_user(
                    request, f"{profile.tenant} is on FL Enterprise.", messages.SUCCESS
                )

    def get_urls(self):  # noqa: ANN201
        return [
            path(
                "adjust/<uuid:tenant_id>/",
                self.admin_site.admin_view(self.adjust_view),
                name="billing_adjust_balance",
            ),
            *super().get_urls(),
        ]

    def adjust_view(self, request: HttpRequest, tenant_id: str) -> HttpResponse:
        tenant = get_object_or_404(Tenant, pk=tenant_id)
        form = AmountReasonForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                balance_adjust(tenant=tenant, actor=request.user, **form.cleaned_data)
            except ValidationError as exc:
                form.add_error(None, exc.messages)
            else:
                self.message_user(request, f"Balance of {tenant} adjusted.", messages.SUCCESS)
                return redirect(reverse("admin:tenants_tenant_change", args=[tenant.pk]))
        return render(
            request,
            "admin/billing/operation.html",
            {
                "title": f"Adjust the balance of {tenant}",
                "form": form,
                "opts": self.model._meta,
                "subject": tenant,
            },
        )


@admin.register(Payout)
class PayoutAdmin(admin.ModelAdmin):
    list_display = (
        "requested_at",
        "contributor",
        "amount_cents",
        "status",
        "decided_at",
        "decided_by",
    )
    list_filter = ("status",)
    search_fields = ("contributor__user__email",)
    readonly_fields = (
        "contributor",
        "amount_cents",
        "status",
        "entry",
        "stripe_transfer_id",
        "requested_at",
        "decided_at",
        "decided_by",
    )
    actions = ["approve", "hold"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def _decide(self, request: HttpRequest, queryset: QuerySet[Payout], approve: bool) -> None:
        done = 0
        for payout in queryset.filter(status__in=[PayoutStatus.REQUESTED, PayoutStatus.HELD]):
            try:
                payout_decide(payout=payout, approve=approve, actor=request.user)
                done += 1
            except ValidationError as exc:
                self.message_user(request, f"{payout}: {' '.join(exc.messages)}", messages.ERROR)
        self.message_user(
            request, f"{'Approved' if approve else 'Held'} {done} payout(s).", messages.SUCCESS
        )

    @admin.action(description="Approve and pay")
    def approve(self, request: HttpRequest, queryset: QuerySet[Payout]) -> None:
        self._decide(request, queryset, True)

    @admin.action(description="Hold")
    def hold(self, request: HttpRequest, queryset: QuerySet[Payout]) -> None:
        self._decide(request, queryset, False)


# Tenants know nothing of money: billing adds the balance to the tenant admin it extends.
admin.site.unregister(Tenant)


@admin.register(Tenant)
class TenantBillingAdmin(TenantAdmin):
    readonly_fields = (*TenantAdmin.readonly_fields, "balance")

    @admin.display(description="Balance")
    def balance(self, tenant: Tenant) -> str:
        url = reverse("admin:billing_adjust_balance", args=[tenant.pk])
        return format_html(
            '{} — <a href="{}">adjust or add promotional credit</a>',
            format_cents(tenant_balance_cents(tenant=tenant)),
            url,
        )
