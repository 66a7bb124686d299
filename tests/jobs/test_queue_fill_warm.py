"""A Daphne does its fill requests' one-time Celery set-up when it starts
(``jobs.dispatch.queue_fill.sender_warm``), so a job start's first fill request, sent while the
first ``assign``s leave, does not connect to the broker then.

Each case runs in a fresh process (a process's first publish is what is measured), against the
real Redis broker, on a queue of its own that no worker reads; the connections counted are the
process's own established TCP connections to Redis, read from ``/proc``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from urllib.parse import urlparse

import pytest
import redis

from tests.site.test_health_settings_admin import ROOT, _clean_env

pytestmark = [pytest.mark.services]

PROBE = r"""
import json, os, sys, uuid
import django
django.setup()
from jobs.dispatch import queue_fill

def redis_connections():
    port = ":%04X" % int(os.environ["PROBE_REDIS_PORT"])
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(path).readlines()[1:]:
            fields = line.split()
            if fields[2].endswith(port) and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count

warm = queue_fill.sender_warm() if sys.argv[1] == "warm" else None
warmed = warm.result(timeout=30) if warm is not None else None
before = redis_connections()
sent = queue_fill._sending_thread().submit(
    queue_fill.queue_fill_send, marks=[(1, uuid.uuid4())]
).result(timeout=30)
print(json.dumps({"warmed": warmed, "before": before, "after": redis_connections(),
                  "sent": len(sent)}))
"""


def _probe(mode: str, queue: str) -> dict:
    url = os.environ["REDIS_URL"]
    env = _clean_env(
        DJANGO_SETTINGS_MODULE="ccgsc_site.settings",
        CCGSC_ENV="test",
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=url,
        CCGSC_CELERY_QUEUE=queue,
        PROBE_REDIS_PORT=str(urlparse(url).port or 6379),
    )
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def queue():
    name = f"fill-warm-{uuid.uuid4().hex[:12]}"
    yield name
    redis.Redis.from_url(os.environ["REDIS_URL"]).delete(name)


def test_a_warmed_process_sends_its_first_fill_request_on_the_connection_it_holds(queue):
    outcome = _probe("warm", queue)
    # the warm-up reached the broker and kept its connection
    assert outcome["warmed"] is True
    assert outcome["before"] >= 1
    # the first fill request went out on it: no connection opened, none for a result either
    assert outcome["sent"] == 1
    assert outcome["after"] == outcome["before"]
    assert redis.Redis.from_url(os.environ["REDIS_URL"]).llen(queue) == 1


def test_without_the_warm_up_the_first_fill_request_connects_to_the_broker(queue):
    outcome = _probe("cold", queue)
    assert outcome["before"] == 0
    assert outcome["sent"] == 1
    assert outcome["after"] > 0
    assert redis.Redis.from_url(os.environ["REDIS_URL"]).llen(queue) == 1


def test_with_eager_celery_there_is_nothing_to_warm(tmp_path):
    # the embedded default (no broker): the fill runs inline, and sender_warm does nothing
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from jobs.dispatch import queue_fill;"
            " print(queue_fill.sender_warm())",
        ],
        cwd=ROOT,
        env=_clean_env(DJANGO_SETTINGS_MODULE="ccgsc_site.settings", CCGSC_VAR_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "None"
