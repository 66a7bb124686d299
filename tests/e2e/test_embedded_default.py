"""`make run`'s embedded default end to end: no PostgreSQL, no Redis, no environment.

The README promises that `make run` serves the platform on SQLite, the in-memory channel layer,
eager Celery and files on disk. The rest of the suite runs against PostgreSQL and Redis in CI, so
SQL that only PostgreSQL accepts passed it while a job start on the embedded default failed
(``OFFSET … LIMIT`` in the queue's statements). Here the site is served the way `make run` serves
it (``scripts/serve.sh`` after ``migrate`` and ``kernels_sync``, in a fresh var directory, with
every service variable removed); a tenant's API key starts a prime count through the REST API,
two anonymous contributors' ``ccgsc-worker``s compute it, and the published answer comes back.
The README's federated-learning demo runs the same way: ``bootstrap_demo``'s training job,
started as its owner presses Start, trained by two edge workers to the end of its rounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.servers import EdgeWorkerProcess, ManagedProcess, free_port, wait_for_http

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PRIMES_BELOW_ONE_MILLION = 78_498  # pi(10^6), a published value

_MAKE_KEY = """
from tenants import services
from tenants.models import Tenant, User
from tenants.roles import Role
from tenants.tiers import Tier
user = User.objects.create_user(email="embedded@example.com")
tenant = services.tenant_create(name="Embedded", owner=user, tier=Tier.ENTERPRISE)
Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.ENTERPRISE)
tenant.refresh_from_db()
print(services.api_key_create(
    tenant=tenant, actor=user, actor_role=Role.OWNER, name="e2e", role=Role.ADMIN
).raw_key)
"""


def _embedded_env(var_dir: Path, port: int) -> dict[str, str]:
    """This environment without any service or project variable: `make run` on a fresh machine."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_URL", "REDIS_URL", "AWS_", "DJANGO_", "CCGSC_"))
    }
    env.update({"CCGSC_VAR_DIR": str(var_dir), "CCGSC_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    return env


_START_DEMO = """
from jobs.models import Job
from jobs.services import job_control
from tenants.models import Tenant
from tenants.roles import Role
tenant = Tenant.objects.get(name="Demo Lab")
job = Job.objects.for_tenant(tenant).get()
job_control(tenant=tenant, job_id=job.pk, role=Role.OWNER, action="start")
print(job.pk)
"""

_DEMO_STATE = """
from jobs.models import Job
job = Job.objects.unscoped().get(pk="{job}")
print(job.status, job.model_versions.count(), job.fl_config.rounds)
"""


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _api(base: str, method: str, path: str, *, key: str | None = None, body: dict | None = None):  # noqa: ANN202
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Api-Key {key}"
    request = urllib.request.Request(  # noqa: S310 - loopback only
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers=headers,
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return json.loads(response.read())


class EmbeddedSite:
    """The site as `make run` serves it (``scripts/serve.sh``), on a fresh var directory with
    no service variable, after ``setup`` management commands; ``manage`` runs more of them on
    its database and ``anonymous_workers`` starts edge workers of new anonymous contributors."""

    def __init__(self, tmp_path: Path, *setup: tuple[str, ...]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = _embedded_env(tmp_path, self.port)
        for command in (("migrate", "--noinput"), ("kernels_sync",), *setup):
            self.manage(*command)
        self.process = ManagedProcess("embedded-site", ["bash", "scripts/serve.sh"], self.env)
        self.workers: list[EdgeWorkerProcess] = []

    def manage(self, *args: str) -> str:
        return _manage(self.env, *args)

    def anonymous_workers(self, count: int) -> None:
        for _ in range(count):
            token = _api(self.base, "POST", "/api/v1/contributors/anonymous/")["token"]
            worker = EdgeWorkerProcess(self.base, token)
            self.workers.append(worker)
            worker.start()

    def log_tail(self) -> str:
        return self.process.log_tail(80)

    def __enter__(self) -> EmbeddedSite:
        self.process.start()
        try:
            wait_for_http(self.base + "/healthz", timeout_s=60, process=self.process.process)
        except BaseException:
            self.process.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop()
        self.process.stop()


def test_make_run_defaults_run_a_job_to_its_published_answer(tmp_path):
    # given the site served as `make run` serves it, on a fresh var directory and no services
    site = EmbeddedSite(tmp_path)
    key = site.manage("shell", "-c", _MAKE_KEY).strip().splitlines()[-1]
    with site:
        # when a tenant creates and starts a prime count through the API and two anonymous
        # contributors' edge workers connect
        job = _api(
            site.base,
            "POST",
            "/api/v1/jobs/",
            key=key,
            body={
                "name": "primes below a million",
                "kernel": "prime_count",
                "range_start": 1,
                "range_end": 1_000_001,
                "chunk_size": 100_000,
                "quorum": 2,
                "start": True,
            },
        )
        site.anonymous_workers(2)
        # then the job completes with the published count, every task validated
        deadline = time.monotonic() + 120
        while True:
            detail = _api(site.base, "GET", f"/api/v1/jobs/{job['id']}/", key=key)
            if detail["status"] in {"completed", "failed", "cancelled"}:
                break
            assert time.monotonic() < deadline, (detail, site.log_tail())
            time.sleep(0.5)
        assert detail["status"] == "completed", (detail, site.log_tail())
        assert detail["tasks_validated"] == detail["task_count"] == 10
        result = _api(site.base, "GET", f"/api/v1/jobs/{job['id']}/result/", key=key)
        assert result["result"]["primes"] == PRIMES_BELOW_ONE_MILLION


def test_make_run_defaults_train_the_readme_demo_to_its_last_round(tmp_path):
    # given `make run`'s set-up (migrate, kernels, the demo tenant and its draft training job)
    with EmbeddedSite(tmp_path, ("bootstrap_demo",)) as site:
        # when its owner starts the demo job and two anonymous edge workers connect, as the
        # README says
        job = site.manage("shell", "-c", _START_DEMO).strip().splitlines()[-1]
        site.anonymous_workers(2)
        # then the job trains through every round: one model version per round after the
        # initial one, and it completes
        deadline = time.monotonic() + 240
        while True:
            status, versions, rounds = site.manage(
                "shell", "-c", _DEMO_STATE.format(job=job)
            ).split()[-3:]
            if status in {"completed", "failed", "cancelled"}:
                break
            assert time.monotonic() < deadline, (status, versions, site.log_tail())
            time.sleep(2)
        assert status == "completed", site.log_tail()
        assert int(versions) == int(rounds) + 1
