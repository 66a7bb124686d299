"""Form helpers shared by the apps' pages."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError


def add_validation_errors(form: forms.Form, exc: ValidationError) -> None:
    """Show a service's ValidationError on a form: per field where it names one, else at the top."""
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc.messages)


def error_text(exc: Exception) -> str:
    """One line for a user from a ValidationError or PermissionDenied raised by a service."""
    return " ".join(getattr(exc, "messages", [str(exc)]))
