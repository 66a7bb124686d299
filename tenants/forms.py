"""HTML forms for sign-up, invitations, members and API keys."""

from __future__ import annotations

import math

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from ccgsc_site.throttling import LOGIN_PER_ACCOUNT, LOGIN_PER_IP, client_ip
from tenants.roles import Role


class SignupForm(forms.Form):
    organisation = forms.CharField(label="Organisation name", max_length=120)
    email = forms.EmailField(label="Work e-mail")
    password = forms.CharField(
        label="Password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 10 characters, not a common password.",
    )


class ThrottledLoginMixin:
    """Refuses sign-in after too many failures for the account or from the address.

    The account counter is keyed by the submitted e-mail whether or not an account has it, and
    a blocked attempt is refused before the password is checked, with the same message for
    every e-mail: nothing tells an attacker which accounts exist or whether a guess was right.
    """

    THROTTLED_CODE = "throttled"
    retry_after_seconds: int | None = None

    def clean(self):  # noqa: ANN201 - Django's signature
        email = (self.data.get("username") or "").strip().lower()
        address = client_ip(self.request) if self.request is not None else ""
        waits = [LOGIN_PER_IP.retry_after(address), LOGIN_PER_ACCOUNT.retry_after(email)]
        wait_seconds = max((wait for wait in waits if wait is not None), default=None)
        if wait_seconds is not None:
            self.retry_after_seconds = wait_seconds
            minutes = math.ceil(wait_seconds / 60)
            raise ValidationError(
                "Too many failed sign-in attempts. Wait %(minutes)s minute(s) and try again, "
                "or reset your password.",
                code=self.THROTTLED_CODE,
                params={"minutes": minutes},
            )
        try:
            cleaned = super().clean()
        except ValidationError:
            LOGIN_PER_IP.record(address)
            LOGIN_PER_ACCOUNT.record(email)
            raise
        if self.get_user() is not None:
            LOGIN_PER_ACCOUNT.reset(email)
        return cleaned


class EmailLoginForm(ThrottledLoginMixin, AuthenticationForm):
    username = forms.EmailField(label="E-mail", widget=forms.EmailInput(attrs={"autofocus": True}))


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    """The admin's sign-in, under the same failure limits."""


class InviteForm(forms.Form):
    email = forms.EmailField(label="E-mail")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, label="Key name", help_text="e.g. 'CI pipeline'")
    role = forms.ChoiceField(choices=[(Role.MEMBER, "Member"), (Role.ADMIN, "Admin")])


class JoinForm(forms.Form):
    password = forms.CharField(
        label="Choose a password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
