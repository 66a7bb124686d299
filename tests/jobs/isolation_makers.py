"""Makers of other tenants' job objects for the URL-walking isolation test."""

from __future__ import annotations

import hashlib

from jobs.models import Job, Kernel, Reducer
from tests.tenants.test_isolation import register


def _kernel(tenant, owner):  # noqa: ANN001, ANN202
    digest = hashlib.sha256(f"other-{tenant.pk}".encode()).hexdigest()
    return Kernel.objects.create(
        tenant=tenant,
        name="secret-kernel",
        version="1",
        sha256=digest,
        size_bytes=10,
        reducer=Reducer.SUM_U64,
        output_bytes=8,
    )


@register("kernel_id")
def kernel_id(tenant, owner):  # noqa: ANN001, ANN201
    return _kernel(tenant, owner)


@register("job_id")
def job_id(tenant, owner):  # noqa: ANN001, ANN201
    kernel = Kernel.objects.filter(tenant=tenant).first() or _kernel(tenant, owner)
    return Job.objects.create(
        tenant=tenant,
        name="their job",
        kernel=kernel,
        range_start=0,
        range_end=100,
        chunk_size=10,
        task_count=10,
    )
