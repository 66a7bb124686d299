"""Builders of FL jobs for the tests: through the service, or straight into the tables for
tenants whose tier could not create one (the isolation walk)."""

from __future__ import annotations

import hashlib

from jobs.fl_models import FlConfig
from jobs.models import Job, JobStatus, ModelVersion
from jobs.services import FlJobSpec, fl_job_create
from jobs.services.fl_init import initial_weights
from jobs.services.model_registry import model_version_create
from tenants.models import Tenant
from tenants.roles import Role

SMALL = {"model_kernel": "logreg", "model_sizes": [64, 10]}


def fl_job(tenant: Tenant, **fields) -> Job:  # noqa: ANN003
    """An FL job created and started through ``fl_job_create`` (small logreg model by default)."""
    spec = FlJobSpec(**{"name": "fl", **SMALL, **fields})
    return fl_job_create(tenant=tenant, actor=None, actor_role=Role.OWNER, spec=spec)


def fl_job_unchecked(
    tenant: Tenant, *, status: str = JobStatus.RUNNING
) -> tuple[Job, ModelVersion]:
    """An FL job with version 0 of its model, written past the tier policy."""
    config = FlConfig.objects.create(
        tenant=tenant,
        model_kernel="logreg",
        model_sizes=[64, 10],
        parameter_count=650,
        data_source="public_partition",
        dataset="digits",
        partition="iid",
        partition_clients=10,
        data_is_private=False,
        rounds=3,
        cohort_size=2,
        min_reports=2,
        round_deadline_seconds=60,
        local_epochs=1,
        batch_size=10,
        learning_rate=0.1,
        client_optimizer="sgd",
        server_strategy="fedavg",
    )
    job = Job.objects.create(
        tenant=tenant, name="their training", kind="fl", fl_config=config, seed=7, status=status
    )
    version = model_version_create(
        job=job, weights=initial_weights("logreg", [64, 10], 7), version=0
    )
    return job, version


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
