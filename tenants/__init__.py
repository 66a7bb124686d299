"""Tenants: organisations, memberships and roles, invitations, API keys, tiers."""
