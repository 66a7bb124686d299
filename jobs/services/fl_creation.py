"""Creating a federated learning job: the spec, its validation (fields, combinations and the
tier's policy), the initial global model in the registry, and the start (which admits the first
round through the metering port).

Rounds themselves (inviting a cohort, collecting updates, aggregating) are the round services'
work; a started FL job is ``running`` with version 0 of its model in the registry, which is what
they start from.
"""

from __future__ import annotations

import secrets

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from jobs.models import ACTIVE_JOB_STATUSES, Job
from jobs.services.creation import MAX_SEED
from jobs.services.fl_init import initial_weights
from jobs.services.fl_validation import FlJobSpec, fl_job_validate
from jobs.services.lifecycle import job_event, job_start
from jobs.services.model_registry import model_version_create
from tenants.models import Tenant, User
from tenants.roles import Action
from tenants.services import require_role
from tenants.tiers import JobKind

__all__ = ["FlJobSpec", "fl_job_create", "fl_job_validate"]


@transaction.atomic
def fl_job_create(
    *, tenant: Tenant, actor: User | None, actor_role: str, spec: FlJobSpec, start: bool = True
) -> Job:
    """Validate an FL job against the tier, store its configuration and its initial global model
    (version 0, deterministic in the seed), and start it (admitting one round's cost)."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    if not tenant.is_active:
        raise PermissionDenied("This tenant is suspended.")
    policy = tenant.policy
    if not policy.allows_job_kind(JobKind.FL):
        raise PermissionDenied(f"{policy.label} does not include federated learning jobs.")
    config = fl_job_validate(tenant=tenant, spec=spec)
    running = Job.objects.for_tenant(tenant).filter(status__in=ACTIVE_JOB_STATUSES).count()
    if running >= policy.max_concurrent_jobs:
        raise ValidationError(
            {"name": f"{policy.label} runs at most {policy.max_concurrent_jobs} jobs at once."}
        )
    config.save()
    seed = secrets.randbelow(MAX_SEED) if spec.seed is None else spec.seed
    job = Job.objects.create(
        tenant=tenant,
        name=spec.name.strip()[:120],
        kind=JobKind.FL,
        fl_config=config,
        seed=seed,
        created_by=actor,
    )
    weights = initial_weights(config.model_kernel, config.model_sizes, seed)
    model_version_create(job=job, weights=weights, version=0, metrics={"initial": True})
    job_event(
        job=job,
        kind="created",
        message=(
            f"{config.model_kernel} {config.model_sizes} ({config.parameter_count:,} parameters), "
            f"{config.rounds} rounds of {config.server_strategy}"
        ),
    )
    if start:
        job = job_start(job=job, actor_role=actor_role)
    return job
