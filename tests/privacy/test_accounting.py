"""ε from jobs.privacy.accounting equals dp-accounting's own, and the budget refuses in time.

dp-accounting needs attrs<24, which the project environment cannot take, so the numbers are
checked in its own environment (var/privacy-venv, from jobs/privacy/requirements-accounting.txt)
through a subprocess; the budget logic is also checked here with a stand-in accountant.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from jobs.privacy import VOLUNTEER_SAMPLING_PROBABILITY, PrivacyBudget

ROOT = Path(__file__).resolve().parents[2]
PRIVACY_PYTHON = Path(os.environ.get("CCGSC_PRIVACY_PYTHON", ROOT / "var/privacy-venv/bin/python"))

CHECK = """
import json
import dp_accounting
from dp_accounting import pld, rdp
from jobs.privacy import PrivacyBudget, epsilon_spent

event = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.0))
theirs = {}
for name, make in (("rdp", rdp.RdpAccountant), ("pld", pld.PLDAccountant)):
    accountant = make()
    accountant.compose(event, 1000)
    theirs[name] = accountant.get_epsilon(1e-5)
ours = {
    name: epsilon_spent(
        noise_multiplier=1.0, sampling_probability=0.01, rounds=1000, delta=1e-5, accountant=name
    )
    for name in ("rdp", "pld")
}
budget = PrivacyBudget(epsilon=2.0, delta=1e-5, noise_multiplier=1.0, sampling_probability=0.01)
volunteer = PrivacyBudget(epsilon=8.0, delta=1e-5, noise_multiplier=1.0)
print(json.dumps({
    "ours": ours,
    "theirs": theirs,
    "max_rounds": budget.max_rounds(limit=2000),
    "volunteer_rounds": volunteer.max_rounds(limit=2000),
    "volunteer_one_round": volunteer.spent(1),
}))
"""


@pytest.mark.skipif(
    not PRIVACY_PYTHON.exists(),
    reason="needs the dp-accounting environment: python -m venv var/privacy-venv && "
    "var/privacy-venv/bin/pip install -r jobs/privacy/requirements-accounting.txt",
)
def test_epsilon_equals_dp_accountings_own_numbers() -> None:
    # given z = 1.0, q = 0.01, 1,000 rounds, δ = 1e-5
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [str(PRIVACY_PYTHON), "-c", CHECK],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result = json.loads(out.stdout)
    # then ε is dp-accounting's, ≈ 2.10 under RDP and ≈ 1.83 under PLD
    assert result["ours"] == result["theirs"]
    assert round(result["ours"]["rdp"], 2) == 2.10
    assert round(result["ours"]["pld"], 2) == 1.83
    # and a budget of ε = 2 stops the same mechanism before round 1,000
    assert 800 < result["max_rounds"] < 1000
    # and a volunteer cohort (q = 1) at z = 1 spends far more per round
    assert result["volunteer_one_round"] > 3
    assert result["volunteer_rounds"] < 10


def _linear(*, noise_multiplier, sampling_probability, rounds, delta, accountant):
    return 0.5 * rounds


def test_budget_refuses_the_round_that_would_exceed_epsilon() -> None:
    budget = PrivacyBudget(epsilon=2.0, delta=1e-5, noise_multiplier=1.0)
    assert budget.sampling_probability == VOLUNTEER_SAMPLING_PROBABILITY == 1.0
    assert budget.allows_another_round(3, compute=_linear)  # round 4 spends exactly 2.0
    assert not budget.allows_another_round(4, compute=_linear)
    assert budget.max_rounds(compute=_linear) == 4
