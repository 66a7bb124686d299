"""The director page in Chromium through real Daphne: when the socket comes back and the viewer
is no longer a signed-in member, the server closes with 4004 and the page says so and stops."""

from __future__ import annotations

import pytest
from django.contrib.sessions.models import Session
from django.test import Client

from tests.e2e.conftest import browser  # noqa: F401 - the shared Chromium fixture
from tests.jobs.test_consumers import _create_job

pytestmark = [pytest.mark.services, pytest.mark.browser, pytest.mark.slow]


def test_director_page_stops_reconnecting_when_the_viewer_is_not_a_member(
    daphne,
    browser,  # noqa: F811
    tenant,
    owner,
    kernels,
):
    job = _create_job(tenant, owner, kernels["prime_count"])
    client = Client()
    client.force_login(owner)
    context = browser.new_context()
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": daphne.url}]
    )
    page = context.new_page()
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(f"{daphne.url}/jobs/{job.pk}/")
    live = page.locator("#live-state")
    live.filter(has_text="live").wait_for(timeout=15_000)
    # the session ends (signed out elsewhere) and the server restarts: the page reconnects
    Session.objects.all().delete()
    daphne.stop()
    daphne.start()
    live.filter(has_text="not a member of this job's tenant").wait_for(timeout=60_000)
    assert live.get_attribute("data-stopped") == "4004"
    opened = len(sockets)
    page.wait_for_timeout(1500)  # no reconnect follows
    assert len(sockets) == opened
    assert page.locator("#controls [data-action]:not([disabled])").count() == 0
    context.close()
