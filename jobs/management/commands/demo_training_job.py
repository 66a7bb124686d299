"""Create the demo training job of a tenant, once (called by `bootstrap_demo`)."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from jobs.models import Job
from jobs.services import FlJobSpec, fl_job_create
from tenants.models import Tenant, User
from tenants.roles import Role
from tenants.tiers import JobKind

DEMO_JOB_NAME = "Demo: 2NN on non-IID digits"


class Command(BaseCommand):
    help = "Create the draft demo FL job (2NN, non-IID digits, FedAvg) unless the tenant has it."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--tenant", required=True, help="Tenant id.")
        parser.add_argument("--owner-email", required=True, help="The tenant owner creating it.")

    @transaction.atomic
    def handle(self, *args: object, **options: object) -> None:
        tenant = Tenant.objects.get(pk=options["tenant"])
        existing = Job.objects.for_tenant(tenant).filter(kind=JobKind.FL, name=DEMO_JOB_NAME)
        job = existing.first()
        if job is None:
            # A draft: admission (one round against the balance) happens when its owner starts it.
            job = fl_job_create(
                tenant=tenant,
                actor=User.objects.get(email=options["owner_email"]),
                actor_role=Role.OWNER,
                spec=FlJobSpec(name=DEMO_JOB_NAME, seed=2017),
                start=False,
            )
        self.stdout.write(str(job.pk))
