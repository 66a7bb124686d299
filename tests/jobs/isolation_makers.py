"""Makers of other tenants' job objects for the URL-walking isolation test."""

from __future__ import annotations

from jobs.models import JobStatus, Kernel
from tests.factories import JobFactory, KernelFactory
from tests.tenants.test_isolation import register


@register("kernel_id")
def kernel_id(tenant, owner):  # noqa: ANN001, ANN201
    return KernelFactory(tenant=tenant, name="secret-kernel")


@register("job_id")
def job_id(tenant, owner):  # noqa: ANN001, ANN201
    kernel = Kernel.objects.filter(tenant=tenant).first() or KernelFactory(tenant=tenant)
    return JobFactory(
        tenant=tenant,
        kernel=kernel,
        name="their job",
        range_end=100,
        chunk_size=10,
        task_count=10,
        status=JobStatus.DRAFT,
    )


@register("model_version_id")
def model_version_id(tenant, owner):  # noqa: ANN001, ANN201
    from tests.jobs.fl_helpers import fl_job_unchecked

    return fl_job_unchecked(tenant)[1]
