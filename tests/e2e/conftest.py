"""Browser fixtures: Playwright driving Debian's Chromium against a real Daphne."""

from __future__ import annotations

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture
def browser(monkeypatch):
    """A headless Chromium. Playwright's sync API runs an event loop in this thread, so the ORM
    calls the test makes between page actions are allowed explicitly."""
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


class FcStack:
    """Daphne + a Celery worker with beat, on the test database, plus edge worker processes."""

    def __init__(self, daphne, celery) -> None:  # noqa: ANN001
        self.daphne = daphne
        self.celery = celery
        self.edge_workers: list = []

    def edge_worker(self, *, concurrency: int = 1, token: str | None = None):  # noqa: ANN201
        from jobs import dispatch
        from tests.servers import EdgeWorkerProcess

        if token is None:
            _, token = dispatch.contributor_create_anonymous()
        worker = EdgeWorkerProcess(self.daphne.url, token, concurrency=concurrency)
        worker.token = token
        worker.start()
        self.edge_workers.append(worker)
        return worker

    def logs(self) -> str:
        parts = [
            ("daphne", self.daphne),
            ("celery", self.celery),
            *[("edge", w) for w in self.edge_workers],
        ]
        return "\n".join(f"--- {name}\n{proc.log_tail(30)}" for name, proc in parts)


@pytest.fixture
def fc_stack(transactional_db, celery_queue):
    """Everything a federated computing job needs, as real processes."""
    import subprocess
    import sys

    from ccgsc_site.celery import app
    from jobs.kernels import kernel_sync_builtins
    from tests.servers import ROOT, CeleryWorker, DaphneServer

    subprocess.run([sys.executable, str(ROOT / "wasm" / "build.py"), "--quiet"], check=True)
    kernel_sync_builtins()
    previous_queue = app.conf.task_default_queue
    app.conf.task_default_queue = celery_queue
    celery = CeleryWorker(celery_queue, beat=True)
    celery.start()
    daphne = DaphneServer(CCGSC_CELERY_QUEUE=celery_queue)
    daphne.start()
    stack = FcStack(daphne, celery)
    yield stack
    for worker in stack.edge_workers:
        worker.stop(kill=True)
    daphne.stop()
    celery.stop()
    app.conf.task_default_queue = previous_queue


def wait_for_job(
    job_id, *, timeout_s: float, stack: FcStack | None = None, status: str = "completed"
):  # noqa: ANN001, ANN201
    """Poll the database until the job reaches ``status``."""
    import time

    from jobs.models import Job

    deadline = time.monotonic() + timeout_s
    job = None
    while time.monotonic() < deadline:
        job = Job.objects.unscoped().get(pk=job_id)
        if job.status == status:
            return job
        if job.status in ("failed", "cancelled") and status != job.status:
            break
        time.sleep(0.25)
    logs = stack.logs() if stack else ""
    raise AssertionError(
        f"job {job_id} is {job.status if job else '?'} ({job.tasks_validated if job else 0} validated), "
        f"not {status}\n{logs}"
    )
