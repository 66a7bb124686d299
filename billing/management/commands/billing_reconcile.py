"""Reconcile the ledger with itself and with Stripe; exit non-zero on any discrepancy."""

from django.core.management.base import BaseCommand, CommandError

from billing.reconciliation import stripe_reconcile


class Command(BaseCommand):
    help = "Check that the books balance and agree with Stripe's payments, refunds and invoices."

    def handle(self, *args: object, **options: object) -> None:
        report = stripe_reconcile()
        for name, count in sorted(report.checked.items()):
            self.stdout.write(f"checked {name}: {count}")
        if not report.stripe_checked:
            self.stdout.write("Stripe is not configured: checked the books only.")
        for discrepancy in report.discrepancies:
            self.stdout.write(str(discrepancy))
        if not report.ok:
            raise CommandError(f"{len(report.discrepancies)} discrepancies")
        self.stdout.write("ok")
