"""The usage → task link is filled in for rows written before the foreign key existed."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("billing", "0001_initial")]
AFTER = [("billing", "0002_usage_meters_task")]


def _migrate(targets):  # noqa: ANN001, ANN202
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_existing_fc_usage_is_linked_to_its_task(tenant, kernels):
    from jobs.models import Task
    from jobs.services import JobSpec, job_create
    from tenants.roles import Role

    job = job_create(
        tenant=tenant,
        actor=None,
        actor_role=Role.OWNER,
        spec=JobSpec(
            name="old",
            kernel=kernels["montecarlo_pi"],
            range_start=0,
            range_end=2 * 10**8,
            chunk_size=10**8,
            params={},
            quorum=1,
            seed=1,
        ),
    )
    task = Task.objects.for_tenant(tenant).filter(job=job).order_by("index").first()
    try:
        old_apps = _migrate(BEFORE)
        usage = old_apps.get_model("billing", "UsageRecord")
        common = {"tenant_id": tenant.pk, "kind": "fc_work_units", "quantity": 1}
        usage.objects.create(idempotency_key=f"fc-task:{task.pk}", job_id=job.pk, **common)
        usage.objects.create(idempotency_key="fc-task:999999999", **common)
        usage.objects.create(idempotency_key="fl-round:x:1", round_number=1, **common)
        new_apps = _migrate(AFTER)
        linked = dict(
            new_apps.get_model("billing", "UsageRecord").objects.values_list(
                "idempotency_key", "task_id"
            )
        )
        assert linked == {
            f"fc-task:{task.pk}": task.pk,
            "fc-task:999999999": None,  # its task is gone: left unlinked, never guessed
            "fl-round:x:1": None,
        }
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
