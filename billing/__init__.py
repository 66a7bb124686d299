"""Billing: ledger, usage metering, Stripe gateway, contributor credits and payouts."""
