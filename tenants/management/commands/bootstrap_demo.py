"""Create (once) an admin user and a demo tenant for `make run`, and print their credentials.

The demo tenant is on FL Core, which is prepaid: it gets a promotional credit (through billing's
admin service for promotional credit, so the ledger shows where the money came from) and a
draft training job, the 2NN on the non-IID digits partition, that its owner starts from the
director.
"""

from __future__ import annotations

import json
import secrets

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from billing.models import EntryKind, JournalEntry
from billing.operations import balance_adjust
from jobs.models import Job
from jobs.services import FlJobSpec, fl_job_create
from tenants import services
from tenants.models import Membership, Tenant, User
from tenants.roles import Role
from tenants.tiers import JobKind, Tier

CREDENTIALS_FILE = "demo-credentials.json"
DEMO_CREDIT_CENTS = 5_000  # $50: the demo job's 50 rounds cost about $25 on FL Core
DEMO_JOB_NAME = "Demo: 2NN on non-IID digits"


class Command(BaseCommand):
    help = "Create the demo admin and tenant if missing; print how to log in."

    def handle(self, *args: object, **options: object) -> None:
        path = settings.VAR_DIR / CREDENTIALS_FILE
        credentials = (
            json.loads(path.read_text())
            if path.exists()
            else {
                "admin": {"email": "admin@ccgsc.local", "password": secrets.token_urlsafe(12)},
                "tenant_owner": {
                    "email": "demo@ccgsc.local",
                    "password": secrets.token_urlsafe(12),
                },
            }
        )
        with transaction.atomic():
            admin = self._user(credentials["admin"], is_staff=True, is_superuser=True)
            owner = self._user(credentials["tenant_owner"])
            if not Membership.objects.unscoped().filter(user=owner).exists():
                services.tenant_create(name="Demo Lab", owner=owner, tier=Tier.CORE)
        path.write_text(json.dumps(credentials, indent=2))
        path.chmod(0o600)
        tenant = Tenant.objects.get(memberships__user=owner, memberships__role=Role.OWNER)
        with transaction.atomic():
            credited = self._demo_credit(tenant=tenant, admin=admin)
            demo_job = self._demo_job(tenant=tenant, owner=owner)
        site = settings.SITE_URL
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "CCGSC is set up.",
                    f"  Site:            {site}/",
                    f"  Admin:           {site}/admin/  {admin.email} / {credentials['admin']['password']}",
                    f"  Demo tenant:     {tenant.name} ({tenant.get_tier_display()})",
                    f"  Tenant login:    {site}/login/  {owner.email} / "
                    f"{credentials['tenant_owner']['password']}",
                    f"  Worker page:     {site}/contribute/",
                    f"  Demo credit:     {credited}",
                    f"  Training job:    {site}/jobs/{demo_job.pk}/  (press Start)",
                    f"  (credentials kept in var/{CREDENTIALS_FILE})",
                    "",
                ]
            )
        )

    def _demo_credit(self, *, tenant: Tenant, admin: User) -> str:
        """A promotional credit, once per tenant (re-running the command adds none)."""
        promoted = JournalEntry.objects.filter(tenant=tenant, kind=EntryKind.PROMOTION).exists()
        if promoted:
            return "already granted"
        balance_adjust(
            tenant=tenant,
            amount_cents=DEMO_CREDIT_CENTS,
            actor=admin,
            reason="Demo credit for the training job",
            promotional=True,
        )
        return f"${DEMO_CREDIT_CENTS / 100:.2f} promotional credit granted"

    def _demo_job(self, *, tenant: Tenant, owner: User) -> Job:
        """The demo training job (a draft: its owner starts it), once per tenant."""
        existing = Job.objects.for_tenant(tenant).filter(kind=JobKind.FL, name=DEMO_JOB_NAME)
        if existing.exists():
            return existing.first()
        return fl_job_create(
            tenant=tenant,
            actor=owner,
            actor_role=Role.OWNER,
            spec=FlJobSpec(name=DEMO_JOB_NAME, seed=2017),
            start=False,
        )

    def _user(self, spec: dict[str, str], **flags: bool) -> User:
        user = User.objects.filter(email=spec["email"]).first()
        if user is None:
            user = User.objects.create_user(email=spec["email"], password=spec["password"], **flags)
        elif not user.check_password(spec["password"]):
            user.set_password(spec["password"])
            user.save(update_fields=["password"])
        return user
