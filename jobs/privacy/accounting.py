"""Privacy accounting for DP-FedAvg with Google's dp-accounting (RDP and PLD).

Each round is a Gaussian mechanism with noise multiplier z on the clipped sum, applied to a
Poisson sample of the population with probability q. Volunteer cohorts are not a Poisson sample
of a known population, so unless the job samples an enrolled population by a stated rule, use
q = 1 (no amplification by subsampling): VOLUNTEER_SAMPLING_PROBABILITY.

dp-accounting is imported on first use, so the rest of the package stays light to import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Accountant = Literal["rdp", "pld"]
VOLUNTEER_SAMPLING_PROBABILITY = 1.0


def _event(noise_multiplier: float, sampling_probability: float) -> object:
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_probability >= 1.0:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sampling_probability, gaussian)


def epsilon_spent(
    *,
    noise_multiplier: float,
    sampling_probability: float,
    rounds: int,
    delta: float,
    accountant: Accountant = "rdp",
) -> float:
    """ε after `rounds` rounds of the (subsampled) Gaussian mechanism at δ; 0 for no rounds."""
    if not 0 < sampling_probability <= 1:
        raise ValueError("sampling probability must be in (0, 1]")
    if rounds <= 0:
        return 0.0
    from dp_accounting import pld, rdp

    ledger = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    ledger.compose(_event(noise_multiplier, sampling_probability), rounds)
    return float(ledger.get_epsilon(delta))


@dataclass(frozen=True)
class PrivacyBudget:
    """A tenant's (ε, δ) for one job and the mechanism each round spends it on."""

    epsilon: float
    delta: float
    noise_multiplier: float
    sampling_probability: float = VOLUNTEER_SAMPLING_PROBABILITY
    accountant: Accountant = "rdp"

    def spent(self, rounds: int, *, compute: Callable[..., float] = epsilon_spent) -> float:
        """ε spent after `rounds` rounds."""
        return compute(
            noise_multiplier=self.noise_multiplier,
            sampling_probability=self.sampling_probability,
            rounds=rounds,
            delta=self.delta,
            accountant=self.accountant,
        )

    def allows_another_round(
        self, rounds_done: int, *, compute: Callable[..., float] = epsilon_spent
    ) -> bool:
        """Whether round rounds_done + 1 keeps ε within the budget; ask before it starts."""
        return self.spent(rounds_done + 1, compute=compute) <= self.epsilon

    def max_rounds(
        self, *, limit: int = 100_000, compute: Callable[..., float] = epsilon_spent
    ) -> int:
        """The most rounds the budget allows (ε grows with rounds: a binary search)."""
        low, high = 0, limit
        while low < high:
            middle = (low + high + 1) // 2
            if self.spent(middle, compute=compute) <= self.epsilon:
                low = middle
            else:
                high = middle - 1
        return low
