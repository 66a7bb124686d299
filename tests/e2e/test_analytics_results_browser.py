"""The analytics results page in Chromium against a real Daphne: the statistics table and one
uPlot bar histogram per column, drawn from the page's embedded data under the site's CSP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jobs.analytics import Column, QuerySpec, derive_statistics, summarize
from jobs.analytics_models import AnalyticsResult
from jobs.fl_models import Round, RoundStatus
from jobs.services.analytics_creation import AnalyticsJobSpec, analytics_job_create
from tenants.roles import Role
from tenants.tiers import Tier
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VENDOR = Path(__file__).resolve().parents[2] / "static" / "vendor" / "uplot" / "uPlot.esm.js"
CHART_DATA = "(i) => window.ccgscHistograms.charts[i].data.map((series) => Array.from(series))"


def test_the_results_page_draws_a_histogram_per_column(daphne, browser, tenant, owner):
    assert VENDOR.exists(), "the charting library is installed by the set-up: run `make vendor`"
    # Given: an analytics job with one closed round over known rows
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    columns = [
        {"name": "a", "feature": 0, "lo": 0.0, "hi": 4.0, "bins": 4},
        {"name": "b", "feature": 1, "lo": -1.0, "hi": 1.0, "bins": 2},
    ]
    job = analytics_job_create(
        tenant=tenant,
        actor=None,
        actor_role=Role.OWNER,
        spec=AnalyticsJobSpec(name="stats", columns=columns, cohort_size=3),
        start=False,
    )
    spec = QuerySpec(
        columns=(Column("a", 0, 0.0, 4.0, 4), Column("b", 1, -1.0, 1.0, 2)), max_rows=9
    )
    rows = np.array([[0.5, -0.5], [1.5, 0.5], [1.7, 0.9], [3.9, -0.2], [3.2, 0.1]], "f4")
    total = summarize(rows, spec).astype(np.float64)
    round_ = Round.objects.create(tenant=tenant, job=job, number=1, status=RoundStatus.CLOSED)
    AnalyticsResult.objects.create(
        tenant=tenant, job=job, round=round_, contributors=3, rows=5,
        aggregate=total.tolist(),
        statistics=[s.as_dict() for s in derive_statistics(total, spec, quantiles=[0.5])],
    )  # fmt: skip
    # When: its owner opens the results page on a phone-sized screen
    page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(daphne.url + "/login/")
    page.get_by_label("E-mail").fill(owner.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard/")
    page.goto(f"{daphne.url}/jobs/{job.pk}/analytics/")
    # Then: one bar chart per column, on a canvas within the screen, with the bins' counts
    page.wait_for_function(
        "() => document.querySelector('[data-histogram=\"1\"]').dataset.points === '2'",
        timeout=15_000,
    )
    for index in (0, 1):
        canvas = page.locator(f'[data-histogram="{index}"] canvas')
        assert canvas.count() == 1
        box = canvas.bounding_box()
        assert box is not None
        assert 0 < box["width"] <= 390
    assert page.evaluate(CHART_DATA, 0) == [[0.5, 1.5, 2.5, 3.5], [1, 2, 0, 2]]
    assert page.evaluate(CHART_DATA, 1) == [[-0.5, 0.5], [2, 3]]
    assert page.locator('[data-bins="0"] tr').count() == 4
    table = page.get_by_test_id("statistics-table").inner_text()
    assert "3 contributors, 5 rows" in page.get_by_test_id("analytics-statistics").inner_text()
    assert "2.16" in table  # the mean of column a: 10.8 / 5
    assert not errors, errors
