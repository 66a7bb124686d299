"""The demo from `make run`: a promoted FL Core tenant whose training job can start."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from billing import metering as billing_metering
from jobs import services
from jobs.models import Job, JobStatus
from tenants.models import Tenant
from tenants.roles import Role
from tenants.tiers import Tier

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _files_in_tmp(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }


def test_bootstrap_credits_the_demo_tenant_once_and_its_training_job_starts():
    out = io.StringIO()
    call_command("bootstrap_demo", stdout=out)
    call_command("bootstrap_demo", stdout=io.StringIO())

    tenant = Tenant.objects.get(name="Demo Lab")
    job = Job.objects.for_tenant(tenant).get()
    assert tenant.tier == Tier.CORE
    assert billing_metering.tenant_balance_cents(tenant=tenant) == 5_000
    assert (job.kind, job.status) == ("fl", JobStatus.DRAFT)
    config = job.fl_config
    assert (config.model_kernel, config.model_sizes) == ("mlp", [64, 200, 200, 10])
    assert (config.dataset, config.partition, config.shards_per_client) == ("digits", "shards", 2)
    assert (config.server_strategy, config.local_epochs, config.batch_size) == ("fedavg", 1, 10)
    assert job.model_versions.count() == 1
    assert "$50.00 promotional credit granted" in out.getvalue()
    assert f"/jobs/{job.pk}/" in out.getvalue()

    started = services.job_control(tenant=tenant, job_id=job.pk, role=Role.OWNER, action="start")
    assert started.status == JobStatus.RUNNING
