"""The demo a new user runs after `make run`, end to end with real processes (Daphne, Celery with
beat, PostgreSQL, Redis, Chromium): `bootstrap_demo` creates the demo tenant and its draft job
"Demo: 2NN on non-IID digits"; two worker pages join; the demo tenant's owner logs in with the
printed credentials, starts the job from the director, and the director's loss and accuracy
curves receive the rounds the pages train, live.

The job runs with the demo's own settings (50 rounds of the 2NN, cohort 10): with two pages online
each round invites both and closes on their two updates; the test watches three rounds close and
then pauses the job from the director, as a user would."""

from __future__ import annotations

import io
import json
import math

import pytest
from django.core.management import call_command

from jobs.fl_models import Participation, RoundStatus
from jobs.management.commands.demo_training_job import DEMO_JOB_NAME
from jobs.models import Job, JobStatus, Worker
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import closed_rounds, wait_until

pytestmark = [pytest.mark.services, pytest.mark.browser, pytest.mark.slow]

ROUNDS_WATCHED = 3
QUALITY_DATA = "() => window.ccgscCurves.charts.quality.data.map((series) => Array.from(series))"
POINTS = "() => Number(document.querySelector('#chart-quality').dataset.points || 0)"


def _open_worker_page(browser, url: str, errors: list[str]):  # noqa: ANN001, ANN202
    """A worker page in a browser profile of its own: the page keeps its contributor token in
    the profile's storage, so two tabs of one profile are one contributor (one worker per
    contributor is invited to a round)."""
    page = browser.new_context().new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on(
        "response",
        lambda r: (
            errors.append(f"HTTP {r.status} {r.request.method} {r.url}")
            if r.status >= 400
            else None
        ),
    )
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/contribute/")
    page.get_by_test_id("cores").select_option("1")
    page.get_by_test_id("join").click()
    page.wait_for_function("() => window.ccgscWorker.state().welcomed", timeout=15_000)
    return page


def test_the_demo_owner_starts_the_demo_job_and_its_curves_move_as_two_pages_train(
    fc_stack, browser, settings, tmp_path
):
    # given the demo as `make run` sets it up (its credentials file kept out of the repository)
    settings.VAR_DIR = tmp_path
    out = io.StringIO()
    call_command("bootstrap_demo", stdout=out)
    owner = json.loads((tmp_path / "demo-credentials.json").read_text())["tenant_owner"]
    job = Job.objects.unscoped().get(name=DEMO_JOB_NAME)
    assert job.status == JobStatus.DRAFT
    assert f"/jobs/{job.pk}/" in out.getvalue()
    # and two worker pages online
    errors: list[str] = []
    pages = [_open_worker_page(browser, fc_stack.daphne.url, errors) for _ in range(2)]
    wait_until(
        lambda: Worker.objects.filter(is_online=True).count() == 2,
        timeout_s=30,
        what="both pages online",
        logs=fc_stack.logs,
    )
    # when the demo tenant's owner logs in and starts the job from the director
    director = browser.new_context().new_page()
    director.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    director.on("pageerror", lambda e: errors.append(str(e)))
    director.goto(fc_stack.daphne.url + "/login/")
    director.get_by_label("E-mail").fill(owner["email"])
    director.get_by_label("Password").fill(owner["password"])
    director.get_by_role("button", name="Log in").click()
    director.wait_for_url("**/dashboard/")
    director.goto(f"{fc_stack.daphne.url}/jobs/{job.pk}/")
    director.wait_for_function(
        "() => document.getElementById('live-state').textContent === 'live'", timeout=15_000
    )
    director.get_by_role("button", name="Start").click()
    wait_for_job(job.pk, timeout_s=30, stack=fc_stack, status=JobStatus.RUNNING)
    # then the director's curves receive the rounds as they close, without a reload
    director.wait_for_function(f"() => ({POINTS})() >= {ROUNDS_WATCHED}", timeout=180_000)
    rounds, losses, train_accuracy, _eval_accuracy = director.evaluate(QUALITY_DATA)
    assert rounds[:ROUNDS_WATCHED] == list(range(1, ROUNDS_WATCHED + 1))
    watched = losses[:ROUNDS_WATCHED]
    assert all(isinstance(v, float | int) and math.isfinite(v) and v > 0 for v in watched), watched
    assert len(set(watched)) > 1, watched  # the loss moves as the model trains
    assert all(0.0 <= v <= 1.0 for v in train_accuracy[:ROUNDS_WATCHED]), train_accuracy
    summary = director.locator("#curve-summary").inner_text()
    assert summary != "No round has closed yet.", summary
    # and each of those rounds folded both pages' updates, trained in their browsers
    for round_ in closed_rounds(job)[:ROUNDS_WATCHED]:
        assert (round_.status, round_.reports) == (RoundStatus.CLOSED, 2), round_.metrics
        included = Participation.objects.unscoped().filter(round=round_, included=True)
        assert sorted(included.values_list("worker__kind", flat=True)) == ["browser", "browser"]
    # and no page logged an error while the job ran
    assert not errors, errors
    # and the owner pauses it from the director
    director.get_by_role("button", name="Pause").click()
    wait_for_job(job.pk, timeout_s=30, stack=fc_stack, status=JobStatus.PAUSED)
    for page in pages:
        assert page.evaluate("() => window.ccgscWorker.state().roundOutcomes.uploaded") >= 1
    # The pause ends the open round: a page's upload or fetch still under way is refused with
    # 409 (which the page records as a late round), and Chromium logs any 4xx on the console.
    refused = ("the server responded with a status of 409 (Conflict)", "HTTP 409 ")
    assert all(any(r in error for r in refused) for error in errors), errors
