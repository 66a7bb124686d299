"""Kernels: the WebAssembly modules federated computing jobs run, content-addressed by the
SHA-256 of their module, and the reducers that combine their outputs.

Imported by ``jobs.models`` (a job references its kernel), so Django registers them with the
app; import them from ``jobs.models`` like the app's other models.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from tenants.models import Tenant


class Reducer(models.TextChoices):
    SUM_U64 = "sum_u64", "Sum (u64 vector)"
    BEST_K = "best_k", "Best k (lowest values)"
    MIN_F64 = "min_f64", "Minimum"
    MAX_F64 = "max_f64", "Maximum"
    CONCAT = "concat", "Concatenation"


class Kernel(models.Model):
    """A WebAssembly kernel, content-addressed by the SHA-256 of its module.

    Built-in kernels have no tenant and are visible to all; a tenant's uploaded kernels are visible
    to that tenant only (``selectors.kernel_list`` filters by ``tenant IS NULL OR tenant = t``).
    Workers fetch modules by hash and check it before running them.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="kernels"
    )
    name = models.SlugField(max_length=60)
    version = models.CharField(max_length=30)
    # Unique per tenant and among built-ins, not globally: a global constraint would tell one
    # tenant that another already uploaded the same module, and let it block that upload.
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveIntegerField()
    reducer = models.CharField(max_length=20, choices=Reducer.choices)
    output_bytes = models.PositiveIntegerField(
        null=True, blank=True, help_text="Fixed output length, when the reducer needs one."
    )
    description = models.TextField(blank=True)
    params_schema = models.JSONField(default=list, blank=True)
    max_range_per_task = models.BigIntegerField(default=1_000_000_000)
    # What the reduced output means, declared in wasm/kernels.json (interpreted by jobs.manifest).
    summary = models.JSONField(default=dict, blank=True)
    # The manifest's "output" and "range" declarations, as written there.
    output_layout = models.JSONField(default=dict, blank=True)
    index_range = models.JSONField(default=dict, blank=True)
    work_unit_scale = models.FloatField(
        default=1.0, help_text="Work units credited per index of a task's range."
    )
    module = models.FileField(upload_to="kernels/", blank=True)
    builtin = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "name", "version"],
                condition=Q(tenant__isnull=False),
                name="kernel_tenant_name_version_unique",
            ),
            models.UniqueConstraint(
                fields=["name", "version"],
                condition=Q(tenant__isnull=True),
                name="kernel_builtin_name_version_unique",
            ),
            models.UniqueConstraint(
                fields=["tenant", "sha256"],
                condition=Q(tenant__isnull=False),
                name="kernel_tenant_sha256_unique",
            ),
            models.UniqueConstraint(
                fields=["sha256"],
                condition=Q(tenant__isnull=True),
                name="kernel_builtin_sha256_unique",
            ),
        ]
        indexes = [models.Index(fields=["sha256"], name="kernel_sha256")]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"

    def params_by_name(self, values: list[float]) -> dict[str, float]:
        """A job's parameter vector keyed by this kernel's declared parameter names."""
        names = [p["name"] for p in self.params_schema or []]
        return dict(zip(names, values, strict=False))
