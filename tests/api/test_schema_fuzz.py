"""Schema-driven fuzzing of every API operation: no 500s, and every response as documented.

Schemathesis generates requests from the served OpenAPI schema (examples, boundary cases and
random inputs, a bounded number per operation) and sends them through the full Django stack
with an API key of a tenant that has data: kernels, jobs (running and completed), members,
invitations and keys. Path ids are drawn both at random and from that tenant's real objects,
so the success paths are exercised too, not only 404s.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core import signals
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from jobs import services as job_services
from jobs.models import Job, ModelVersion
from tenants import services as tenant_services
from tenants.roles import Role
from tenants.tiers import Tier
from tests.factories import MembershipFactory

pytestmark = pytest.mark.slow

# Per operation: positive (valid by the schema) and negative (invalid) examples.
EXAMPLES_PER_OPERATION = {GenerationMode.POSITIVE: 50, GenerationMode.NEGATIVE: 25}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture
def fuzzed_tenant(settings, tenant, owner, kernels, django_capture_on_commit_callbacks, tmp_path):
    """A tenant with something behind every route."""
    # Throttle counters of our own: the fuzzer spends anonymous budgets other tests need.
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "fuzz"}
    }
    # Model versions of the FL job below go to a directory of this test's own.
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    from tests.jobs.helpers import new_worker, work_until_done

    tenant.tier = Tier.ENTERPRISE
    tenant.save(update_fields=["tier"])
    MembershipFactory(tenant=tenant, role=Role.MEMBER)
    tenant_services.invitation_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, email="invited@example.org"
    )
    tenant_services.api_key_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, name="spare", role=Role.MEMBER
    )
    spec = {"range_start": 1, "range_end": 20_001, "chunk_size": 10_000, "params": {}}
    with django_capture_on_commit_callbacks(execute=True):
        job_services.job_create(
            tenant=tenant,
            actor=owner,
            actor_role=Role.OWNER,
            spec=job_services.JobSpec(name="done", kernel=kernels["prime_count"], **spec),
        )
        work_until_done([new_worker()[0], new_worker()[0]])
        job_services.job_create(
            tenant=tenant,
            actor=owner,
            actor_role=Role.OWNER,
            spec=job_services.JobSpec(name="running", kernel=kernels["montecarlo_pi"], **spec),
        )
        # and a federated learning job, so its rounds and model versions have ids to find
        job_services.fl_job_create(
            tenant=tenant,
            actor=owner,
            actor_role=Role.OWNER,
            spec=job_services.FlJobSpec(name="training"),
        )
    assert Job.objects.for_tenant(tenant).filter(status="completed").exists()
    return tenant


@pytest.fixture
def fuzz_key(fuzzed_tenant, owner):
    return tenant_services.api_key_create(
        tenant=fuzzed_tenant, actor=owner, actor_role=Role.OWNER, name="fuzz", role=Role.ADMIN
    )


@pytest.fixture
def api_schema(fuzzed_tenant, fuzz_key):
    """The served schema, called in-process, with real ids offered for every path parameter."""
    from jobs.selectors import job_list, kernel_list
    from tenants.selectors import api_key_list, invitation_list, membership_list

    # As Django's test client does: the handler must not close the test's transaction.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    real_ids = {
        "job_id": [str(pk) for pk in job_list(tenant=fuzzed_tenant).values_list("pk", flat=True)],
        "kernel_id": [
            str(pk) for pk in kernel_list(tenant=fuzzed_tenant).values_list("pk", flat=True)
        ],
        "membership_id": [
            str(pk) for pk in membership_list(tenant=fuzzed_tenant).values_list("pk", flat=True)
        ],
        "invitation_id": [
            str(pk) for pk in invitation_list(tenant=fuzzed_tenant).values_list("pk", flat=True)
        ],
        "model_version_id": [
            str(pk)
            for pk in ModelVersion.objects.for_tenant(fuzzed_tenant).values_list("pk", flat=True)
        ],
        # Never the key the fuzzer authenticates with: revoking it would end the run early.
        "api_key_id": [
            str(pk)
            for pk in api_key_list(tenant=fuzzed_tenant)
            .exclude(pk=fuzz_key.api_key.pk)
            .values_list("pk", flat=True)
        ],
    }
    schema = schemathesis.openapi.from_wsgi("/api/schema/", _served_like_a_server(WSGIHandler()))

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):  # noqa: ANN001, ANN202
        if not path_parameters:
            return st.just(path_parameters)
        choices = {
            name: st.sampled_from([value, *real_ids.get(name, [])])
            for name, value in path_parameters.items()
        }
        return st.fixed_dictionaries(choices)

    yield schema
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def _served_like_a_server(app):  # noqa: ANN001, ANN202
    """Read and close every response as a WSGI server does (a streamed file is closed after it
    is sent); the fuzzer's in-process transport would otherwise leave streamed files open."""

    def wrapped(environ, start_response):  # noqa: ANN001, ANN202
        result = app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return [body]

    return wrapped


def test_every_operation_answers_as_documented(api_schema, fuzz_key):
    # given: every operation of the served schema
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 28
    headers = {"Authorization": f"Api-Key {fuzz_key.raw_key}"}
    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    # when: valid and invalid requests, a bounded number per operation
    for operation in operations:
        # Each operation starts with the tenant's full request budget: the fuzz is about the
        # schema, and the whole API's worth of requests exceeds one minute's budget (throttling
        # has its own tests).
        cache.delete(f"throttle_tenant_tenant:{fuzz_key.api_key.tenant_id}")
        seen = statuses.setdefault(operation.label, set())
        for mode, examples in EXAMPLES_PER_OPERATION.items():
            try:
                _fuzz(api_schema, operation, mode, examples, headers, seen)
            except Unsatisfiable:
                # Nothing to make invalid: the operation takes no input.
                assert mode == GenerationMode.NEGATIVE
            except Exception as exc:  # noqa: BLE001 - collect every operation's failure
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:3000])
    # then
    assert not failures, "\n\n".join(failures)
    # and the real ids reached the success paths, not only 404s
    assert 200 in statuses["GET /api/v1/jobs/{job_id}/"]
    assert 200 in statuses["GET /api/v1/jobs/{job_id}/result/"]
    assert 201 in statuses["POST /api/v1/jobs/"] or 400 in statuses["POST /api/v1/jobs/"]
    assert 200 in statuses["GET /api/v1/model-versions/{model_version_id}/download/"]


def _fuzz(api_schema, operation, mode, examples, headers, seen) -> None:  # noqa: ANN001
    """Send ``examples`` generated requests to one operation and check every response."""

    @given(case=operation.as_strategy(generation_mode=mode, hooks=api_schema.hooks))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case) -> None:  # noqa: ANN001
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        seen.add(response.status_code)

    run()
