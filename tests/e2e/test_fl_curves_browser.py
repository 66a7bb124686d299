"""The director's FL curves in Chromium against a real Daphne: drawn from the socket's state on a
phone-sized page, then a round closed in the database reaches the chart without a reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.fl_models import Round, RoundStatus
from tests.factories import PASSWORD
from tests.jobs.fl_helpers import fl_job_unchecked
from tests.jobs.test_fl_curves import closed_round

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VENDOR = Path(__file__).resolve().parents[2] / "static" / "vendor" / "uplot" / "uPlot.esm.js"
QUALITY_DATA = "() => window.ccgscCurves.charts.quality.data.map((series) => Array.from(series))"
COHORT_DATA = "() => window.ccgscCurves.charts.cohort.data.map((series) => Array.from(series))"


def test_the_director_draws_the_curves_and_a_closed_round_appears_live(
    daphne, browser, tenant, owner
):
    assert VENDOR.exists(), "the charting library is installed by the set-up: run `make vendor`"
    # Given: an FL job with three closed rounds and the fourth open
    job, _ = fl_job_unchecked(tenant)
    for number in (1, 2, 3):
        closed_round(job, number, rejected=number - 1)
    Round.objects.create(tenant=tenant, job=job, number=4, status=RoundStatus.OPEN)
    # When: its owner opens the director on a phone-sized screen
    page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(daphne.url + "/login/")
    page.get_by_label("E-mail").fill(owner.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard/")
    page.goto(f"{daphne.url}/jobs/{job.pk}/")
    # Then: both charts draw on a canvas no wider than the screen, with the three rounds
    page.wait_for_function(
        "() => document.querySelector('#chart-quality').dataset.points === '3'", timeout=15_000
    )
    for chart in ("chart-quality", "chart-cohort"):
        canvas = page.locator(f"#{chart} canvas")
        assert canvas.count() == 1
        box = canvas.bounding_box()
        assert box is not None
        assert 0 < box["width"] <= 390
        assert box["height"] > 0
    assert page.get_by_role("img", name="Loss and accuracy per round").count() == 1
    assert page.evaluate(QUALITY_DATA) == [
        [1, 2, 3],
        [2.0, 1.0, 0.666667],
        [0.51, 0.52, 0.53],
        [None, None, None],
    ]
    assert page.evaluate(COHORT_DATA) == [
        [1, 2, 3],
        [3, 3, 3],
        [1, 1, 1],
        [1, 0, 1],
        [0, 1, 2],
    ]
    assert page.locator("#curve-rows tr").count() == 3
    # When: round 4 closes in the database (the next open)
    Round.objects.for_tenant(tenant).filter(job=job, number=4).delete()
    closed_round(job, 4, eval_accuracy=0.6)
    Round.objects.create(tenant=tenant, job=job, number=5, status=RoundStatus.OPEN)
    # Then: the chart gains the point without a reload
    page.wait_for_function(
        "() => document.querySelector('#chart-quality').dataset.points === '4'", timeout=15_000
    )
    assert page.evaluate(QUALITY_DATA) == [
        [1, 2, 3, 4],
        [2.0, 1.0, 0.666667, 0.5],
        [0.51, 0.52, 0.53, 0.54],
        [None, None, None, 0.6],
    ]
    assert page.locator("#curve-rows tr").first.locator("td").first.text_content() == "4"
    assert "round 5 open" in page.locator("#curve-summary").inner_text()
    assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
    assert not errors, errors
