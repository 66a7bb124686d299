"""Web pages for tenants: sign-up, dashboard, switching, members, invitations and API keys."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from ccgsc_site.forms import add_validation_errors, error_text
from tenants import selectors, services
from tenants.forms import (
    ApiKeyForm,
    EmailLoginForm,
    InviteForm,
    JoinForm,
    RoleForm,
    SignupForm,
)
from tenants.middleware import SESSION_KEY, active_membership_or_404
from tenants.roles import Action, role_allows


def signup(request: HttpRequest) -> HttpResponse:
    """Create an organisation and its owner, then sign in."""
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            tenant, user = services.signup(**form.cleaned_data)
        except ValidationError as exc:
            add_validation_errors(form, exc)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session[SESSION_KEY] = str(tenant.pk)
            messages.success(request, f"Welcome to CCGSC, {tenant.name}.")
            return redirect("dashboard")
    return render(
        request, "tenants/signup.html", {"form": form}, status=400 if form.errors else 200
    )


class LoginView(auth_views.LoginView):
    """Sign in by e-mail; a throttled attempt answers 429 with Retry-After."""

    authentication_form = EmailLoginForm
    redirect_authenticated_user = True

    def form_invalid(self, form: EmailLoginForm) -> HttpResponse:
        response = super().form_invalid(form)
        if form.retry_after_seconds is not None:
            response.status_code = 429
            response["Retry-After"] = str(form.retry_after_seconds)
        return response


@login_required
@require_POST
def tenant_switch(request: HttpRequest) -> HttpResponse:
    """Make another of the user's tenants the active one."""
    membership = selectors.membership_get_for_user(
        user=request.user, tenant_id=request.POST.get("tenant_id", "")
    )
    request.session[SESSION_KEY] = str(membership.tenant_id)
    messages.info(request, f"Now working in {membership.tenant.name}.")
    return redirect("dashboard")


@login_required
def members(request: HttpRequest) -> HttpResponse:
    """Members and invitations of the active tenant."""
    membership = active_membership_or_404(request)
    tenant = membership.tenant
    invite_form = InviteForm(request.POST or None)
    if request.method == "POST" and invite_form.is_valid():
        try:
            services.invitation_create(
                tenant=tenant,
                actor=request.user,
                actor_role=membership.role,
                **invite_form.cleaned_data,
            )
        except ValidationError as exc:
            add_validation_errors(invite_form, exc)
        except PermissionDenied as exc:
            invite_form.add_error(None, str(exc))
        else:
            messages.success(request, f"Invitation sent to {invite_form.cleaned_data['email']}.")
            return redirect("members")
    can_manage = role_allows(membership.role, Action.MANAGE_MEMBERS)
    context = {
        "tenant": tenant,
        "membership": membership,
        "members": selectors.membership_list(tenant=tenant),
        "invitations": selectors.invitation_list(tenant=tenant).filter(
            accepted_at__isnull=True, revoked_at__isnull=True
        )
        if can_manage
        else [],
        "invite_form": invite_form,
        "role_form": RoleForm(),
        "can_manage": can_manage,
    }
    return render(
        request, "tenants/members.html", context, status=400 if invite_form.errors else 200
    )


@login_required
@require_POST
def member_role(request: HttpRequest, membership_id: uuid.UUID) -> HttpResponse:
    """Change a member's role."""
    membership = active_membership_or_404(request)
    target = selectors.membership_get(tenant=membership.tenant, membership_id=membership_id)
    form = RoleForm(request.POST)
    if form.is_valid():
        try:
            services.membership_role_set(
                tenant=membership.tenant,
                actor_role=membership.role,
                membership=target,
                role=form.cleaned_data["role"],
                actor=request.user,
            )
            messages.success(request, f"{target.user.email} is now {form.cleaned_data['role']}.")
        except (ValidationError, PermissionDenied) as exc:
            messages.error(request, error_text(exc))
    return redirect("members")


@login_required
@require_POST
def member_remove(request: HttpRequest, membership_id: uuid.UUID) -> HttpResponse:
    """Remove a member, or leave the tenant."""
    membership = active_membership_or_404(request)
    target = selectors.membership_get(tenant=membership.tenant, membership_id=membership_id)
    try:
        services.membership_remove(
            tenant=membership.tenant,
            actor_role=membership.role,
            membership=target,
            actor=request.user,
        )
        messages.success(request, f"{target.user.email} was removed.")
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, error_text(exc))
    return redirect("members")


@login_required
@require_POST
def invitation_revoke(request: HttpRequest, invitation_id: uuid.UUID) -> HttpResponse:
    """Revoke a pending invitation."""
    membership = active_membership_or_404(request)
    invitation = selectors.invitation_get(tenant=membership.tenant, invitation_id=invitation_id)
    try:
        services.invitation_revoke(
            tenant=membership.tenant,
            actor=request.user,
            actor_role=membership.role,
            invitation=invitation,
        )
        messages.success(request, f"Invitation to {invitation.email} revoked.")
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    return redirect("members")


def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """Accept an invitation: signed-in users join; newcomers choose a password first."""
    invitation = services.invitation_get_by_token_unscoped(raw_token=token)
    if invitation is None:
        return render(request, "tenants/invitation_invalid.html", status=404)
    join_form = JoinForm(request.POST or None)
    errors: list[str] = []
    if request.method == "POST":
        try:
            if request.user.is_authenticated:
                joined = services.invitation_accept(raw_token=token, user=request.user)
            elif join_form.is_valid():
                joined = services.invitation_accept_new_user(
                    raw_token=token, password=join_form.cleaned_data["password"]
                )
                login(request, joined.user, backend="django.contrib.auth.backends.ModelBackend")
            else:
                joined = None
        except ValidationError as exc:
            if join_form.is_bound and hasattr(join_form, "cleaned_data"):
                add_validation_errors(join_form, exc)
            errors.extend(exc.messages)
            joined = None
        if joined is not None:
            request.session[SESSION_KEY] = str(joined.tenant_id)
            messages.success(request, f"You joined {joined.tenant.name}.")
            return redirect("dashboard")
    context = {"invitation": invitation, "join_form": join_form, "errors": errors}
    failed = bool(errors or join_form.errors)
    return render(request, "tenants/invitation_accept.html", context, status=400 if failed else 200)


@login_required
def api_keys(request: HttpRequest) -> HttpResponse:
    """List, create (shown once) and revoke API keys."""
    membership = active_membership_or_404(request)
    tenant = membership.tenant
    form = ApiKeyForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            created = services.api_key_create(
                tenant=tenant, actor=request.user, actor_role=membership.role, **form.cleaned_data
            )
            form = ApiKeyForm()
        except ValidationError as exc:
            add_validation_errors(form, exc)
        except PermissionDenied as exc:
            form.add_error(None, str(exc))
    context = {
        "tenant": tenant,
        "membership": membership,
        "form": form,
        "created": created,
        "keys": selectors.api_key_list(tenant=tenant),
        "can_manage": role_allows(membership.role, Action.MANAGE_API_KEYS),
    }
    return render(request, "tenants/api_keys.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, api_key_id: uuid.UUID) -> HttpResponse:
    """Revoke an API key."""
    membership = active_membership_or_404(request)
    api_key = selectors.api_key_get(tenant=membership.tenant, api_key_id=api_key_id)
    try:
        services.api_key_revoke(
            tenant=membership.tenant,
            actor=request.user,
            actor_role=membership.role,
            api_key=api_key,
        )
        messages.success(request, f"Key {api_key.prefix}… revoked.")
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    return redirect("api_keys")
