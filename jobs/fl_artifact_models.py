"""The bytes an FL job keeps in storage, described in PostgreSQL: the chunked uploads of client
updates (chunks in storage, their hashes here) and the global model versions of the registry
(content-addressed, with the round and metrics that produced them).

Kept apart from ``jobs.fl_models`` (configuration, rounds, participations); imported at the
end of ``jobs.models`` so Django registers these models with the app.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from jobs.fl_models import Participation, Round
from jobs.models import Job
from tenants.models import Tenant
from tenants.scoping import TenantOwnedModel


class UploadStatus(models.TextChoices):
    RECEIVING = "receiving", "Receiving chunks"
    COMPLETE = "complete", "Complete, queued for the fold"
    FOLDED = "folded", "Folded into the round"
    REJECTED = "rejected", "Rejected"


class UpdateUpload(TenantOwnedModel):
    """A chunked, resumable upload of one participation's update (one per participation).

    The body is the training kernel's v2 output: a 32-byte metrics header, then f32[d]. Chunks
    live in storage, one object per chunk keyed by its index and hash; ``chunks`` maps each
    accepted index to its SHA-256 (metadata only: the bytes never live in PostgreSQL).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    participation = models.OneToOneField(
        Participation, on_delete=models.CASCADE, related_name="upload"
    )
    total_bytes = models.PositiveBigIntegerField()
    chunk_size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    base_version = models.PositiveIntegerField(default=0)
    chunks = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=10, choices=UploadStatus.choices, default=UploadStatus.RECEIVING
    )
    rejection_code = models.CharField(max_length=20, blank=True)
    rejection_message = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "status"], name="updateupload_tenant_status")]
        constraints = [
            models.CheckConstraint(
                condition=Q(chunk_size__gt=0) & Q(total_bytes__gt=0), name="updateupload_sizes"
            ),
        ]

    def __str__(self) -> str:
        return f"upload {self.pk} of {self.participation_id}"

    @property
    def chunk_count(self) -> int:
        return -(-self.total_bytes // self.chunk_size)


class ModelVersion(TenantOwnedModel):
    """A global model of an FL job, content-addressed in storage (version 0 is the initial one)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="model_versions")
    version = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=300)
    size_bytes = models.PositiveBigIntegerField()
    round = models.ForeignKey(
        Round, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "job", "version"], name="modelversion_job_version_unique"
            ),
            models.UniqueConstraint(
                fields=["tenant", "job", "sha256"], name="modelversion_job_sha256_unique"
            ),
            models.CheckConstraint(
                condition=Q(size_bytes__gt=0) & Q(version__gte=0), name="modelversion_valid"
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "job", "-version"], name="modelversion_tenant_job"),
            # The worker weights route looks a version up by hash, across tenants.
            models.Index(fields=["sha256"], name="modelversion_sha256"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} v{self.version}"


__all__ = ["ModelVersion", "UpdateUpload", "UploadStatus"]
