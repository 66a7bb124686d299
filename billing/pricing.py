"""Prices per tier, in one place (shown on the public pricing page)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from billing.money import cents_for
from tenants.tiers import Tier

GIGABYTE = 1_000_000_000
WORK_UNIT_BLOCK = 1_000_000_000  # FC work is priced per 10^9 validated work units


@dataclass(frozen=True, slots=True)
class Price:
    """A tier's prices. ``prepaid`` tiers draw from a balance; others are invoiced."""

    tier: str
    fc_cents_per_block: Fraction
    fl_round_cents: int
    transfer_cents_per_gb: int
    monthly_cents: int
    prepaid: bool
    overdraft_cents: int
    contributor_share: Fraction  # of each charge, paid to the contributors who did the work
    credits_per_block: int  # contributor credits (points) per 10^9 validated work units

    def fc_work_cents(self, work_units: int) -> int:
        """The charge for validated FC work units."""
        return cents_for(
            quantity=work_units, price_cents=self.fc_cents_per_block, per=WORK_UNIT_BLOCK
        )

    def transfer_cents(self, *, bytes_transferred: int) -> int:
        """The charge for FL traffic."""
        return cents_for(
            quantity=bytes_transferred, price_cents=self.transfer_cents_per_gb, per=GIGABYTE
        )

    def fl_round_total_cents(self, *, bytes_transferred: int) -> int:
        """The charge for one completed FL round and its traffic."""
        return self.fl_round_cents + self.transfer_cents(bytes_transferred=bytes_transferred)


PRICES: dict[str, Price] = {
    Tier.COMMUNITY: Price(
        tier=Tier.COMMUNITY,
        fc_cents_per_block=Fraction(0),
        fl_round_cents=0,
        transfer_cents_per_gb=0,
        monthly_cents=0,
        prepaid=False,
        overdraft_cents=0,
        contributor_share=Fraction(0),
        credits_per_block=100,
    ),
    Tier.CORE: Price(
        tier=Tier.CORE,
        fc_cents_per_block=Fraction(10),
        fl_round_cents=50,
        transfer_cents_per_gb=5,
        monthly_cents=0,
        prepaid=True,
        overdraft_cents=0,
        contributor_share=Fraction(1, 2),
        credits_per_block=100,
    ),
    Tier.ENTERPRISE: Price(
        tier=Tier.ENTERPRISE,
        fc_cents_per_block=Fraction(8),
        fl_round_cents=40,
        transfer_cents_per_gb=4,
        monthly_cents=250_000,
        prepaid=False,
        overdraft_cents=0,
        contributor_share=Fraction(1, 2),
        credits_per_block=100,
    ),
}

# Contributor credits per validated replica are capped, whatever a tenant declares.
MAX_CREDITS_PER_REPLICA = 1_000
# Contributor credits for an FL update included in an aggregated round.
CREDITS_PER_ROUND_UPDATE = 10
MIN_PAYOUT_CENTS = 1_000


def price_for(tier: str) -> Price:
    """The prices of ``tier``."""
    return PRICES[tier]


def credits_for(work_units: int, tier: str) -> int:
    """Contributor credits (points) for one validated replica, capped."""
    credits = cents_for(
        quantity=work_units, price_cents=price_for(tier).credits_per_block, per=WORK_UNIT_BLOCK
    )
    return max(1, min(MAX_CREDITS_PER_REPLICA, credits))
