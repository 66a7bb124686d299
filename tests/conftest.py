"""Shared fixtures: tenants, clients, and the real servers the service-backed suite needs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from rest_framework.test import APIClient

from tenants import services
from tenants.roles import Role
from tests.factories import PASSWORD, MembershipFactory, TenantFactory, UserFactory

REQUIRE_SERVICES = os.environ.get("CCGSC_REQUIRE_SERVICES") == "1"
POSTGRES = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
REDIS = bool(os.environ.get("REDIS_URL"))
CHROMIUM = shutil.which("chromium") or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium")


def pytest_configure(config: pytest.Config) -> None:
    """The flush between transactional tests retries when it is a deadlock's victim
    (``tests.db_flush``)."""
    from tests import db_flush

    db_flush.install()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip service and browser tests when their dependencies are absent — unless CI requires them."""
    missing_services = not (POSTGRES and REDIS)
    for item in items:
        reason = None
        if item.get_closest_marker("services") and missing_services:
            reason = "needs DATABASE_URL (PostgreSQL) and REDIS_URL"
        elif item.get_closest_marker("browser") and not CHROMIUM:
            reason = "needs Debian's chromium (make test installs it)"
        if reason is None:
            continue
        if REQUIRE_SERVICES:
            raise pytest.UsageError(f"CCGSC_REQUIRE_SERVICES=1 but {item.nodeid} {reason}")
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def _protocol_checks() -> Iterator[None]:
    """Every outbound message the server builds is validated against its schema (here and in
    the servers the tests start), and the browser's generated protocol module exists (the JS
    tests and pages import it)."""
    import subprocess
    import sys
    from pathlib import Path

    from jobs import protocol

    protocol.set_outbound_checks(True)
    os.environ["CCGSC_PROTOCOL_CHECK_OUTBOUND"] = "1"
    script = Path(__file__).resolve().parents[1] / "scripts" / "generate_protocol_defs.py"
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    yield
    os.environ.pop("CCGSC_PROTOCOL_CHECK_OUTBOUND", None)


@pytest.fixture
def owner(db):
    return UserFactory()


@pytest.fixture
def tenant(owner):
    membership = MembershipFactory(user=owner, role=Role.OWNER)
    return membership.tenant


@pytest.fixture
def other_owner(db):
    return UserFactory()


@pytest.fixture
def other_tenant(other_owner):
    return MembershipFactory(user=other_owner, role=Role.OWNER, tenant=TenantFactory()).tenant


@pytest.fixture
def member(tenant):
    return MembershipFactory(tenant=tenant, role=Role.MEMBER).user


@pytest.fixture
def owner_client(client, owner, tenant):
    """A browser session logged in as the tenant's owner."""
    assert client.login(email=owner.email, password=PASSWORD)
    return client


@pytest.fixture
def raw_api_key(tenant, owner):
    return services.api_key_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, name="tests", role=Role.ADMIN
    ).raw_key


@pytest.fixture
def api_client(raw_api_key):
    """An API client authenticated with an admin API key of ``tenant``."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw_api_key}")
    return client


@pytest.fixture(scope="session", autouse=True)
def _close_server_connections_before_teardown(django_db_setup, django_db_blocker):
    """Servers the tests started may leave PostgreSQL sessions behind (a killed Daphne); end
    them so the test database can be dropped."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _serial_dispatch_in_process(settings):
    """Consumers driven in this process share its threads with pytest-django, whose test
    database outlives no connection left open in a pool thread; run them on one thread here.
    Daphne started by the service-backed tests runs the parallel path."""
    settings.DISPATCH_PARALLEL_DATABASE = False


@pytest.fixture(autouse=True)
def _eager_celery_unless_a_worker_runs(request):
    """Unit tests run Celery tasks in-process; tests that start a real worker opt out."""
    from ccgsc_site.celery import app

    eager = not {"celery_worker", "fc_stack"} & set(request.fixturenames)
    previous = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager = eager
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous


@pytest.fixture(scope="session")
def celery_queue() -> str:
    import uuid

    return f"ccgsc-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def celery_worker(transactional_db, celery_queue, tmp_path):
    """A real Celery worker process (Redis broker) on the test database."""
    from ccgsc_site.celery import app
    from tests.servers import CeleryWorker

    mail_dir = tmp_path / "mail"
    worker = CeleryWorker(
        celery_queue,
        CCGSC_MAIL_BACKEND="file",
        CCGSC_MAIL_FILE_PATH=str(mail_dir),
    )
    previous_queue = app.conf.task_default_queue
    app.conf.task_default_queue = celery_queue
    worker.start()
    worker.mail_dir = mail_dir
    yield worker
    worker.stop()
    app.conf.task_default_queue = previous_queue


@pytest.fixture
def daphne(transactional_db):
    """A real Daphne server on the test database (function-scoped: data is committed)."""
    from tests.servers import DaphneServer

    server = DaphneServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def wasm_built() -> None:
    """The kernels are built (idempotent; `make test` builds them first)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "wasm" / "build.py"), "--quiet"], check=True)


@pytest.fixture
def kernels(db, wasm_built):
    """The built-in kernels by name."""
    from jobs.kernels import kernel_sync_builtins

    return {kernel.name: kernel for kernel in kernel_sync_builtins()}
