"""Give the demo tenant its promotional credit, once (called by `bootstrap_demo`)."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from billing.models import EntryKind, JournalEntry
from billing.operations import balance_adjust
from tenants.models import Tenant, User


class Command(BaseCommand):
    help = "Grant a tenant a promotional credit unless it already has one."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--tenant", required=True, help="Tenant id.")
        parser.add_argument("--actor-email", required=True, help="The staff user granting it.")
        parser.add_argument("--cents", type=int, default=5_000)

    @transaction.atomic
    def handle(self, *args: object, **options: object) -> None:
        tenant = Tenant.objects.get(pk=options["tenant"])
        actor = User.objects.get(email=options["actor_email"])
        if JournalEntry.objects.filter(tenant=tenant, kind=EntryKind.PROMOTION).exists():
            self.stdout.write("already granted")
            return
        cents = int(options["cents"])
        balance_adjust(
            tenant=tenant,
            amount_cents=cents,
            actor=actor,
            reason="Demo credit for the training job",
            promotional=True,
        )
        self.stdout.write(f"${cents / 100:.2f} promotional credit granted")
