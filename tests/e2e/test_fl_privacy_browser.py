"""ε spent, live, in Chromium against a real Daphne: the director's privacy card changes when a
round of a differentially private job closes, without a reload, and says so in text."""

from __future__ import annotations

import pytest

from jobs.fl_models import FlConfig, Round, RoundStatus
from jobs.privacy import epsilon_spent
from tests.factories import PASSWORD
from tests.jobs.fl_helpers import fl_job_unchecked
from tests.jobs.test_fl_curves import closed_round

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _epsilon(rounds: int) -> float:
    return epsilon_spent(noise_multiplier=1.0, sampling_probability=1.0, rounds=rounds, delta=1e-5)


def test_the_director_shows_epsilon_change_when_a_round_closes(daphne, browser, tenant, owner):
    # Given: a DP job (z = 1, δ = 1e-5, ε = 10: two rounds of three) with round 1 closed and
    # round 2 open, each closed round carrying its cumulative ε as the round services record it
    job, _ = fl_job_unchecked(tenant)
    FlConfig.objects.for_tenant(tenant).filter(pk=job.fl_config_id).update(
        differential_privacy=True,
        dp_epsilon=10.0,
        dp_delta=1e-5,
        dp_noise_multiplier=1.0,
        dp_clip_norm=0.5,
        dp_accountant="rdp",
        dp_mode="central",
        dp_sampling="volunteer",
        dp_rounds_allowed=2,
    )
    first = closed_round(job, 1)
    Round.objects.for_tenant(tenant).filter(pk=first.pk).update(
        epsilon_spent=_epsilon(1), clip_norm=0.5
    )
    Round.objects.create(tenant=tenant, job=job, number=2, status=RoundStatus.OPEN, clip_norm=0.5)
    # When: its owner opens the director
    page = browser.new_context().new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(daphne.url + "/login/")
    page.get_by_label("E-mail").fill(owner.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard/")
    page.goto(f"{daphne.url}/jobs/{job.pk}/")
    # Then: the card says what round 1 spent, and the live region says it in words
    spent = page.get_by_test_id("epsilon-spent")
    # (rendered by the server, then by the socket's state: the same words)
    assert spent.inner_text() == f"{_epsilon(1):.3f} of 10 after 2 rounds"
    page.wait_for_function(
        "() => document.querySelector('#privacy-live').textContent.startsWith('Privacy budget')",
        timeout=15_000,
    )
    live = page.locator("#privacy-live")
    assert live.get_attribute("aria-live") == "polite"
    assert f"ε = {_epsilon(1):.3f} of 10 spent" in live.inner_text()
    assert "0 more rounds fit the budget" in page.get_by_test_id("rounds-left").inner_text()
    # When: round 2 closes in the database with the accountant's ε after two rounds
    Round.objects.for_tenant(tenant).filter(job=job, number=2).delete()
    second = closed_round(job, 2)
    Round.objects.for_tenant(tenant).filter(pk=second.pk).update(
        epsilon_spent=_epsilon(2), clip_norm=0.5
    )
    # Then: ε on the page changes without a reload, in the card, the meter and the live region
    expected = f"{_epsilon(2):.3f} of 10 after 2 rounds"
    page.wait_for_function(
        "(text) => document.querySelector('#epsilon-spent').textContent === text",
        arg=expected,
        timeout=15_000,
    )
    assert f"ε = {_epsilon(2):.3f} of 10 spent" in live.inner_text()
    assert "no more rounds fit the budget" in live.inner_text()
    meter = page.locator("#epsilon-meter")
    assert float(meter.evaluate("(element) => element.value")) == pytest.approx(
        _epsilon(2), rel=1e-5
    )
    assert "Privacy budget" in (meter.get_attribute("aria-valuetext") or "")
    assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
    assert not errors, errors
