"""ε from jobs.privacy.accounting equals dp-accounting's own, and the budget refuses in time."""

from __future__ import annotations

import dp_accounting
from dp_accounting import pld, rdp

from jobs.privacy import VOLUNTEER_SAMPLING_PROBABILITY, PrivacyBudget, epsilon_spent


def test_epsilon_equals_dp_accountings_own_numbers() -> None:
    # given z = 1.0, q = 0.01, 1,000 rounds, δ = 1e-5
    event = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.0))
    theirs = {}
    for name, make in (("rdp", rdp.RdpAccountant), ("pld", pld.PLDAccountant)):
        accountant = make()
        accountant.compose(event, 1000)
        theirs[name] = accountant.get_epsilon(1e-5)
    # when our accountant reports the same mechanism
    ours = {
        name: epsilon_spent(
            noise_multiplier=1.0,
            sampling_probability=0.01,
            rounds=1000,
            delta=1e-5,
            accountant=name,
        )
        for name in ("rdp", "pld")
    }
    # then ε is dp-accounting's, ≈ 2.10 under RDP and ≈ 1.83 under PLD
    assert ours == theirs
    assert round(ours["rdp"], 2) == 2.10
    assert round(ours["pld"], 2) == 1.83
    # and a budget of ε = 2 stops the same mechanism before round 1,000
    budget = PrivacyBudget(epsilon=2.0, delta=1e-5, noise_multiplier=1.0, sampling_probability=0.01)
    assert 800 < budget.max_rounds(limit=2000) < 1000
    # and a volunteer cohort (q = 1) at z = 1 spends far more per round
    volunteer = PrivacyBudget(epsilon=8.0, delta=1e-5, noise_multiplier=1.0)
    assert volunteer.spent(1) > 3
    assert volunteer.max_rounds(limit=2000) < 10


def _linear(*, noise_multiplier, sampling_probability, rounds, delta, accountant):
    return 0.5 * rounds


def test_budget_refuses_the_round_that_would_exceed_epsilon() -> None:
    budget = PrivacyBudget(epsilon=2.0, delta=1e-5, noise_multiplier=1.0)
    assert budget.sampling_probability == VOLUNTEER_SAMPLING_PROBABILITY == 1.0
    assert budget.allows_another_round(3, compute=_linear)  # round 4 spends exactly 2.0
    assert not budget.allows_another_round(4, compute=_linear)
    assert budget.max_rounds(compute=_linear) == 4
