"""Who lends compute: contributors (an account, or an anonymous device that can be claimed
later) and their workers (each connected browser page or edge process), with the trust and
credit counters validation keeps.

Imported by ``jobs.models`` (a replica references its worker and contributor), so Django
registers them with the app; import them from ``jobs.models`` like the app's other models.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from tenants.models import Tenant


class Contributor(models.Model):
    """Someone who lends compute: an account, or an anonymous device that can be claimed later."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="contributor",
    )
    display_name = models.CharField(max_length=80, blank=True)
    team = models.CharField(max_length=80, blank=True, db_index=True)
    stripe_account_id = models.CharField(
        max_length=100, blank=True, help_text="Stripe Connect account that receives payouts."
    )
    # Enterprise private pools: a contributor registered by a tenant serves only that tenant.
    pool_tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="pool_contributors"
    )
    token_version = models.PositiveIntegerField(default=1)
    is_banned = models.BooleanField(default=False)
    validated_replicas = models.PositiveBigIntegerField(default=0)
    validated_work_units = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        if self.display_name:
            return self.display_name
        return self.user.email if self.user_id else f"anonymous-{str(self.id)[:8]}"


class WorkerKind(models.TextChoices):
    BROWSER = "browser", "Browser"
    EDGE = "edge", "Edge"


class Worker(models.Model):
    """One connected runtime (a browser page or an edge process) of a contributor."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    contributor = models.ForeignKey(Contributor, on_delete=models.CASCADE, related_name="workers")
    kind = models.CharField(max_length=10, choices=WorkerKind.choices)
    client_version = models.CharField(max_length=40, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    capabilities = models.JSONField(default=dict, blank=True)
    slots = models.PositiveSmallIntegerField(default=1)
    channel_name = models.CharField(max_length=200, blank=True)
    connected_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    disconnected_at = models.DateTimeField(null=True, blank=True)
    is_online = models.BooleanField(default=False)
    is_banned = models.BooleanField(default=False)
    # Trust: consecutive validated results; reset by any invalid result, error or time-out.
    consecutive_valid = models.PositiveIntegerField(default=0)
    validated_replicas = models.PositiveBigIntegerField(default=0)
    invalid_replicas = models.PositiveBigIntegerField(default=0)
    errored_replicas = models.PositiveBigIntegerField(default=0)
    expired_replicas = models.PositiveBigIntegerField(default=0)
    validated_work_units = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-last_seen_at"]
        indexes = [models.Index(fields=["is_online"])]

    def __str__(self) -> str:
        return f"{self.kind} {str(self.id)[:8]}"
