"""Browser workers in headless Chromium beside edge workers, the director page, and a tab
killed mid-job. Real Daphne, Celery (with beat), PostgreSQL and Redis."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from billing.selectors import leaderboard
from jobs.models import Assignment, Job, Worker
from tenants import services as services_tenants
from tenants.roles import Role
from tests.e2e.conftest import wait_for_job
from tests.factories import PASSWORD

pytestmark = [pytest.mark.services, pytest.mark.browser, pytest.mark.slow]


def _job(stack, tenant, owner, kernel: str, **spec) -> Job:  # noqa: ANN001
    """Create a job the way a tenant does: through the REST API, with an API key."""
    raw_key = services_tenants.api_key_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, name=f"e2e-{time.monotonic_ns()}"
    ).raw_key
    body = {
        "name": kernel,
        "kernel": kernel,
        "params": {},
        "quorum": 2,
        "range_start": 1,
        "lease_seconds": 60,
        **spec,
    }
    request = urllib.request.Request(
        stack.daphne.url + "/api/v1/jobs/",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Api-Key {raw_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        return Job.objects.unscoped().get(pk=json.load(response)["id"])


def _open_worker_page(browser, url: str, errors: list[str]):  # noqa: ANN001, ANN202
    context = browser.new_context()
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/contribute/")
    page.get_by_test_id("cores").select_option("1")
    page.get_by_test_id("join").click()
    page.wait_for_function("() => window.ccgscWorker.state().welcomed", timeout=15_000)
    return context, page


def _state(page):  # noqa: ANN001, ANN202
    return page.evaluate("() => window.ccgscWorker.state()")


def test_three_pages_and_two_edge_workers_count_primes_and_the_director_watches(
    fc_stack, browser, tenant, owner
):
    errors: list[str] = []
    pages = [_open_worker_page(browser, fc_stack.daphne.url, errors) for _ in range(3)]
    edges = [fc_stack.edge_worker(concurrency=1) for _ in range(2)]

    # the tenant logs in and will watch the job in the director
    director = browser.new_context().new_page()
    director.goto(fc_stack.daphne.url + "/login/")
    director.get_by_label("E-mail").fill(owner.email)
    director.get_by_label("Password").fill(PASSWORD)
    director.get_by_role("button", name="Log in").click()
    director.wait_for_url("**/dashboard/")

    job = _job(fc_stack, tenant, owner, "prime_count", range_end=10_000_001, chunk_size=250_000)
    director.goto(f"{fc_stack.daphne.url}/jobs/{job.pk}/")
    job = wait_for_job(job.pk, timeout_s=180, stack=fc_stack)
    assert job.result["primes"] == 664_579

    # the director saw it finish, live
    director.wait_for_function(
        "() => document.querySelector('[data-testid=job-status]').textContent === 'completed'",
        timeout=15_000,
    )
    assert "664579" in director.get_by_test_id("job-result").inner_text()

    # validated work is recorded per worker and per contributor
    browser_workers = Worker.objects.filter(kind="browser", validated_replicas__gt=0)
    edge_workers = Worker.objects.filter(kind="edge", validated_replicas__gt=0)
    assert browser_workers.count() >= 1
    assert edge_workers.count() >= 1
    credited = Assignment.objects.unscoped().filter(job=job, credited_at__isnull=False).count()
    assert credited == 2 * job.task_count
    assert sum(Worker.objects.values_list("validated_replicas", flat=True)) == credited
    # each page shows the credits it earned this session
    page_credits = sum(_state(page)["creditsValidated"] for _, page in pages)
    assert page_credits == sum(browser_workers.values_list("validated_replicas", flat=True))
    assert not [e for e in errors if "Content Security Policy" in e], errors
    # contributors earned credits (awarded by the Celery worker) and appear on the leaderboard
    deadline = time.monotonic() + 30
    while len(leaderboard()["all_time"]) < 5:
        assert time.monotonic() < deadline, (leaderboard(), fc_stack.logs())
        time.sleep(0.2)
    board_page = pages[0][1]
    board_page.goto(fc_stack.daphne.url + "/leaderboard/")
    entries = board_page.get_by_test_id("leaderboard-all-time").locator("li")
    assert entries.count() == 5
    for context, _ in pages:
        context.close()
    assert all(edge.process.poll() is None for edge in edges)


def test_monte_carlo_gives_the_same_estimate_in_browsers_and_edge_workers(
    fc_stack, browser, tenant, owner
):
    spec = {"range_start": 0, "range_end": 40_000_000, "chunk_size": 4_000_000, "seed": 2026}
    errors: list[str] = []
    pages = [_open_worker_page(browser, fc_stack.daphne.url, errors) for _ in range(2)]
    in_browsers = wait_for_job(
        _job(fc_stack, tenant, owner, "montecarlo_pi", **spec).pk, timeout_s=120, stack=fc_stack
    )
    for context, _ in pages:
        context.close()
    fc_stack.edge_worker(concurrency=1)
    fc_stack.edge_worker(concurrency=1)
    on_edges = wait_for_job(
        _job(fc_stack, tenant, owner, "montecarlo_pi", **spec).pk, timeout_s=120, stack=fc_stack
    )
    assert in_browsers.result == on_edges.result
    assert in_browsers.result_sha256 == on_edges.result_sha256
    assert abs(in_browsers.result["pi_estimate"] - 3.14159) < 0.001
    kinds = set(
        Assignment.objects.unscoped().filter(job=in_browsers).values_list("worker__kind", flat=True)
    )
    assert kinds == {"browser"}


def test_closing_a_tab_mid_job_loses_nothing(fc_stack, browser, tenant, owner):
    errors: list[str] = []
    (doomed_context, doomed), (_, survivor) = (
        _open_worker_page(browser, fc_stack.daphne.url, errors) for _ in range(2)
    )
    fc_stack.edge_worker(concurrency=1)
    job = _job(
        fc_stack,
        tenant,
        owner,
        "prime_count",
        range_end=6_000_000_001,
        chunk_size=200_000_000,
        lease_seconds=5,
    )
    deadline = time.monotonic() + 60
    while _state(doomed)["tasksCompleted"] < 2:
        assert time.monotonic() < deadline, fc_stack.logs()
        time.sleep(0.1)
    doomed_context.close()  # the tab is gone, with whatever it was running
    job = wait_for_job(job.pk, timeout_s=240, stack=fc_stack)
    credited = Assignment.objects.unscoped().filter(job=job, credited_at__isnull=False)
    assert credited.count() == 2 * job.task_count
    assert job.result["primes"] == 279_545_368  # pi(6 * 10^9)
    assert _state(survivor)["connection"] == "connected"
