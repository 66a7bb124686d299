"""Malformed input and key guessing against real Daphnes, as an outside client sees them.

Two Daphne processes behind one port share the throttle counters through Redis, so a guesser
cannot spread attempts over processes to multiply the budget.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

from tenants import services
from tenants.roles import Role
from tests.servers import wait_for_http
from tests.services.helpers import Launcher

pytestmark = [pytest.mark.services, pytest.mark.slow]

API_KEY_FAILURES = 5


def _call(url: str, *, method: str = "GET", key: str = "", body: object = None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    if key:
        headers["Authorization"] = f"Api-Key {key}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.fixture
def live(transactional_db, kernels):
    launcher = Launcher(
        processes=2,
        # Counters of this test only (Redis outlives test runs).
        CCGSC_CACHE_PREFIX=f"live-{uuid.uuid4().hex[:8]}",
        CCGSC_API_KEY_FAILURES_PER_IP=str(API_KEY_FAILURES),
    )
    launcher.start()
    try:
        wait_for_http(launcher.url + "/healthz", process=launcher.process)
        yield launcher
    finally:
        launcher.stop()


def test_an_outside_client_gets_json_errors_and_no_500s(live, tenant, owner):
    key = services.api_key_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, name="live", role=Role.ADMIN
    ).raw_key
    for path in ("/api/v1/jobs/not-a-uuid/", "/api/v1/nowhere/", "/api/v1/kernels/1/"):
        status, headers, body = _call(live.url + path, key=key)
        assert status == 404, path
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body)["error"]["code"] == "not_found"
    job = {"name": "x", "kernel": "prime_count", "range_start": 0, "range_end": 10, "chunk_size": 5}
    for params in ("abc", ["abc"], [10**400], {"x0": {"deep": 1}}):
        status, _, body = _call(
            live.url + "/api/v1/jobs/", method="POST", key=key, body={**job, "params": params}
        )
        assert status == 400, (params, body)
        assert "params" in json.loads(body)["error"]["fields"]


def test_key_guessing_is_limited_across_processes(live, tenant, owner):
    key = services.api_key_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, name="live"
    ).raw_key
    # Each request on its own connection: the kernel spreads them over both Daphnes.
    statuses = [
        _call(live.url + "/api/v1/tenant/", key=f"ccg_guess_{n}")[0]
        for n in range(API_KEY_FAILURES + 3)
    ]
    assert statuses == [401] * API_KEY_FAILURES + [429] * 3
    status, headers, body = _call(live.url + "/api/v1/tenant/", key=key)
    assert status == 429
    assert int(headers["Retry-After"]) > 0
    assert json.loads(body)["error"]["code"] == "throttled"
