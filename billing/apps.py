from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        """Billing meters the work planes' work: register it behind their port."""
        from billing.metering import BillingMetering  # models are ready only now
        from jobs.metering import metering_register

        metering_register(BillingMetering())
