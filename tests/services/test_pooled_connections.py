"""A burst of requests at a real Daphne shares a bounded pool of PostgreSQL connections."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tenants import services
from tenants.roles import Role
from tests import servers
from tests.servers import DaphneServer

pytestmark = [pytest.mark.services, pytest.mark.slow]

POOL_SIZE = 4
REQUESTS = 100


def _status(url: str, headers: dict[str, str], start: threading.Barrier) -> int:
    request = urllib.request.Request(url, headers=headers)
    start.wait()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


class BackendCounter(threading.Thread):
    """Samples how many server connections the test database has until stopped."""

    def __init__(self, application_name: str) -> None:
        super().__init__(daemon=True)
        self.application_name = application_name
        self.peak = 0
        self.samples = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        url = servers.test_database_url().rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(url, autocommit=True) as monitor:
            while not self.stopped.is_set():
                (count,) = monitor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (self.application_name,),
                ).fetchone()
                self.peak = max(self.peak, count)
                self.samples += 1
                self.stopped.wait(0.005)


def test_a_burst_of_requests_stays_within_the_pool(transactional_db, tenant, owner):
    # given: a Daphne whose process may hold at most four connections
    raw_key = services.api_key_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, name="burst"
    ).raw_key
    application_name = f"burst-{uuid.uuid4().hex[:8]}"  # libpq names the server's sessions
    server = DaphneServer(CCGSC_DATABASE_POOL_SIZE=str(POOL_SIZE), PGAPPNAME=application_name)
    server.start()
    counter = BackendCounter(application_name)
    counter.start()
    start = threading.Barrier(REQUESTS)
    targets = [
        (server.url + "/readyz", {})
        if n % 2
        else (server.url + "/api/v1/tenant/", {"Authorization": f"Api-Key {raw_key}"})
        for n in range(REQUESTS)
    ]
    try:
        # when: a hundred requests that touch the database, all at once
        with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
            statuses = list(pool.map(lambda target: _status(*target, start), targets))
    finally:
        counter.stopped.set()
        counter.join()
        server.stop()
    # then: every request was served and the server never held more than the pool
    assert statuses == [200] * REQUESTS, server.log_tail()
    assert counter.samples > 0
    assert 1 <= counter.peak <= POOL_SIZE, counter.peak


def test_the_pool_replaces_persistent_connections_on_postgresql(settings):
    database = settings.DATABASES["default"]
    assert database["CONN_MAX_AGE"] == 0
    assert database["OPTIONS"]["pool"]["max_size"] == settings.DATABASE_POOL_SIZE
