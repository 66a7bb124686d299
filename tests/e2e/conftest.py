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

    def edge_worker(
        self,
        *,
        concurrency: int = 1,
        token: str | None = None,
        url: str | None = None,
        extra_args: tuple[str, ...] = (),
    ):  # noqa: ANN201
        """Start a ``ccgsc-worker`` (a new anonymous contributor unless ``token``) against the
        site, or against ``url`` (e.g. a proxy in front of it), with ``extra_args``."""
        from jobs import dispatch
        from tests.servers import EdgeWorkerProcess

        if token is None:
            contributor, token = dispatch.contributor_create_anonymous()
        else:
            contributor = dispatch.worker_token_verify(token=token)
        worker = EdgeWorkerProcess(
            url or self.daphne.url, token, concurrency=concurrency, extra_args=extra_args
        )
        worker.token = token
        worker.contributor_id = contributor.pk
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


@pytest.fixture(scope="module")
def fc_servers(django_db_setup, celery_queue, wasm_built):
    """Daphne and a Celery worker with beat on the test database, started once per module: they
    hold no state a test depends on (every row lives in PostgreSQL, reset between tests). Their
    cache keys (throttle budgets, e.g. 20 anonymous contributors an hour per address) get a prefix
    of their own, so earlier runs against the same Redis cannot exhaust them."""
    import uuid

    from ccgsc_site.celery import app
    from tests.servers import CeleryWorker, DaphneServer

    previous_queue = app.conf.task_default_queue
    app.conf.task_default_queue = celery_queue
    cache_prefix = f"e2e-{uuid.uuid4().hex[:12]}"
    celery = CeleryWorker(celery_queue, beat=True, CCGSC_CACHE_PREFIX=cache_prefix)
    celery.start()
    daphne = DaphneServer(CCGSC_CELERY_QUEUE=celery_queue, CCGSC_CACHE_PREFIX=cache_prefix)
    daphne.start()
    yield daphne, celery
    daphne.stop()
    celery.stop()
    app.conf.task_default_queue = previous_queue


@pytest.fixture
def fc_stack(transactional_db, fc_servers):
    """Everything a federated computing job needs, as real processes. The servers are shared by
    the module; each test gets its own rows (committed, flushed afterwards), the built-in kernels
    and its own edge workers. A server a failed kill test left down is started again."""
    from jobs.kernels import kernel_sync_builtins

    daphne, celery = fc_servers
    for server in (celery, daphne):
        if server.process is None or server.process.poll() is not None:
            server.start()
    kernel_sync_builtins()
    stack = FcStack(daphne, celery)
    yield stack
    for worker in stack.edge_workers:
        worker.stop(kill=True)


@pytest.fixture(scope="module")
def fl_servers(django_db_setup, celery_queue, wasm_built):
    """Two Daphnes sharing one port behind the launcher (which replaces a dead one) and a Celery
    worker with beat, on the test database, started once per module: the shape of a production
    node, so a test can kill one Daphne while the other serves."""
    import uuid

    from ccgsc_site.celery import app
    from tests.servers import CeleryWorker, wait_for_http
    from tests.services.helpers import Launcher

    previous_queue = app.conf.task_default_queue
    app.conf.task_default_queue = celery_queue
    cache_prefix = f"e2e-{uuid.uuid4().hex[:12]}"
    celery = CeleryWorker(celery_queue, beat=True, CCGSC_CACHE_PREFIX=cache_prefix)
    celery.start()
    launcher = Launcher(
        processes=2, CCGSC_CELERY_QUEUE=celery_queue, CCGSC_CACHE_PREFIX=cache_prefix
    )
    launcher.start()
    wait_for_http(launcher.url + "/healthz", timeout_s=60, process=launcher.process)
    yield launcher, celery
    launcher.stop()
    celery.stop()
    app.conf.task_default_queue = previous_queue


@pytest.fixture
def fl_stack(transactional_db, fl_servers):
    """``fc_stack`` over the launcher's two Daphnes: own rows, built-in kernels, own workers."""
    from jobs.kernels import kernel_sync_builtins
    from tests.servers import wait_for_http

    launcher, celery = fl_servers
    if celery.process is None or celery.process.poll() is not None:
        celery.start()
    if launcher.process is None or launcher.process.poll() is not None:
        launcher.start()
        wait_for_http(launcher.url + "/healthz", timeout_s=60, process=launcher.process)
    kernel_sync_builtins()
    stack = FcStack(launcher, celery)
    yield stack
    for worker in stack.edge_workers:
        worker.stop(kill=True)


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
