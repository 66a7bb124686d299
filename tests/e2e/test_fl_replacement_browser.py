"""A decline replaced end to end, with real processes (Daphne, Celery with beat, PostgreSQL,
Redis, Chromium): a round invites a worker page and a test client on the worker socket; a second
page joins; the test client answers ``round_declined``; the second page is invited in its place,
trains the decliner's shard in its browser, and the round closes on the two pages' updates.

The test client declines only once the second page is online, so the round's draw (both workers
online at open) and the replacement (the only eligible worker left) are both determined."""

from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect

from billing.operations import balance_adjust
from ccgsc_worker import protocol as edge
from jobs import dispatch
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.models import Worker
from tenants.tiers import Tier
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import wait_until
from tests.jobs.fl_helpers import fl_job
from tests.jobs.helpers import HELLO

pytestmark = [pytest.mark.services, pytest.mark.browser, pytest.mark.slow]


def _open_worker_page(browser, url: str, errors: list[str]):  # noqa: ANN001, ANN202
    page = browser.new_context().new_page()  # a profile, and so a contributor, of its own
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/contribute/")
    page.get_by_test_id("cores").select_option("1")
    page.get_by_test_id("join").click()
    page.wait_for_function("() => window.ccgscWorker.state().welcomed", timeout=15_000)
    return page


def _welcomed_worker_ids() -> set[str]:
    return {str(pk) for pk in Worker.objects.filter(is_online=True).values_list("pk", flat=True)}


def test_a_declined_invite_goes_to_a_page_that_joined_later_and_the_round_closes(
    fc_stack, browser, tenant, owner
):
    # given a core tenant with credit, one worker page and a test client on the worker socket
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    errors: list[str] = []
    first = _open_worker_page(browser, fc_stack.daphne.url, errors)
    _, token = dispatch.contributor_create_anonymous()
    ws_url = fc_stack.daphne.url.replace("http://", "ws://") + "/ws/edge/"
    with connect(ws_url, open_timeout=10) as client:
        client.send(json.dumps({**HELLO, "token": token}))
        welcome = json.loads(client.recv(timeout=10))
        assert welcome["type"] == "welcome", welcome
        wait_until(
            lambda: len(_welcomed_worker_ids()) == 2,
            timeout_s=15,
            what="the page and the client online",
            logs=fc_stack.logs,
        )
        # when a job's round of two invites both
        job = fl_job(
            tenant,
            model_kernel="mlp",
            model_sizes=[64, 32, 10],
            cohort_size=2,
            min_reports=2,
            rounds=1,
            round_deadline_seconds=120,
            partition_clients=4,
            seed=3,
        )
        invite = edge.parse_server_message(client.recv(timeout=30))
        assert invite["type"] == "round_invite", invite
        # and a second page joins while the round waits, and then the client declines
        online_before = _welcomed_worker_ids()
        second = _open_worker_page(browser, fc_stack.daphne.url, errors)
        wait_until(
            lambda: len(_welcomed_worker_ids()) == 3,
            timeout_s=15,
            what="the second page online",
            logs=fc_stack.logs,
        )
        (second_worker,) = _welcomed_worker_ids() - online_before
        declined = edge.round_declined(invite["participation"], "paused", "the test declines")
        client.send(edge.encode_text(declined))
        # then the second page is invited in its place, trains, and the round closes with the
        # two pages' updates
        job = wait_for_job(job.pk, timeout_s=120, stack=fc_stack)
    round_ = Round.objects.for_tenant(tenant).get(job=job, number=1)
    assert (round_.status, round_.reports, round_.replacements) == (RoundStatus.CLOSED, 2, 1)
    assert round_.metrics["replacements"] == 1
    rows = {p.worker_id: p for p in Participation.objects.for_tenant(tenant).filter(round=round_)}
    assert len(rows) == 3
    decliner = Participation.objects.for_tenant(tenant).get(pk=invite["participation"])
    assert (decliner.status, decliner.rejection_code) == ("declined", "paused")
    replacement = next(p for w, p in rows.items() if str(w) == second_worker)
    assert (replacement.status, replacement.included) == ("reported", True)
    assert replacement.invite["data"]["client_index"] == decliner.invite["data"]["client_index"]
    included = [p for p in rows.values() if p.included]
    assert sorted(p.worker.kind for p in included) == ["browser", "browser"]
    for page in (first, second):
        assert page.evaluate("() => window.ccgscWorker.state().roundOutcomes") == {"uploaded": 1}
    assert not errors, errors
