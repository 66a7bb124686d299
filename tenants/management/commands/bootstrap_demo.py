"""Create (once) an admin user and a demo tenant for `make run`, and print their credentials.

The demo tenant is on FL Core, which is prepaid: it gets a promotional credit (billing's
``demo_credit``, through its promotional-credit service, so the ledger shows where the money came
from) and a draft training job (jobs' ``demo_training_job``: the 2NN on the non-IID digits
partition) that its owner starts from the director. Tenants import neither app: the commands are
called by name.
"""

from __future__ import annotations

import io
import json
import secrets

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction

from tenants import services
from tenants.models import Membership, Tenant, User
from tenants.roles import Role
from tenants.tiers import Tier

CREDENTIALS_FILE = "demo-credentials.json"
DEMO_CREDIT_CENTS = 5_000  # $50: the demo job's 50 rounds cost about $25 on FL Core


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
        credited = self._run(
            "demo_credit", tenant=str(tenant.pk), actor_email=admin.email, cents=DEMO_CREDIT_CENTS
        )
        demo_job = self._run("demo_training_job", tenant=str(tenant.pk), owner_email=owner.email)
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
                    f"  Worker page:     {site}/contribute/  (for two FL workers, open it in two "
                    "browser profiles, e.g. one private window: tabs of one profile are one "
                    "contributor)",
                    f"  Demo credit:     {credited}",
                    f"  Training job:    {site}/jobs/{demo_job}/  (press Start)",
                    f"  (credentials kept in var/{CREDENTIALS_FILE})",
                    "",
                ]
            )
        )

    def _run(self, command: str, **options: object) -> str:
        out = io.StringIO()
        call_command(command, stdout=out, **options)
        return out.getvalue().strip()

    def _user(self, spec: dict[str, str], **flags: bool) -> User:
        user = User.objects.filter(email=spec["email"]).first()
        if user is None:
            user = User.objects.create_user(email=spec["email"], password=spec["password"], **flags)
        elif not user.check_password(spec["password"]):
            user.set_password(spec["password"])
            user.save(update_fields=["password"])
        return user
