"""Background work for tenants."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.urls import reverse

from tenants.models import Invitation


@shared_task(acks_late=True, autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def invitation_email_send(invitation_id: str, raw_token: str) -> None:
    """E-mail the one-time invitation link (a re-run re-sends; the link stays the same)."""
    invitation = (
        Invitation.objects.unscoped().select_related("tenant", "invited_by").get(pk=invitation_id)
    )
    if not invitation.is_pending:
        return
    link = settings.SITE_URL.rstrip("/") + reverse("invitation_accept", args=[raw_token])
    inviter = invitation.invited_by.email if invitation.invited_by else "A colleague"
    send_mail(
        subject=f"You are invited to {invitation.tenant.name} on CCGSC",
        message=(
            f"{inviter} invited you to join {invitation.tenant.name} as {invitation.role}.\n\n"
            f"Accept within 7 days: {link}\n"
        ),
        from_email=None,
        recipient_list=[invitation.email],
    )
