"""Issue 11 item 13: kernel hashes are private to each tenant; pool-worker tokens stay the pool's."""

from __future__ import annotations

import hashlib

import pytest
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient
from wasmtime import wat2wasm

from jobs import dispatch
from jobs.kernels import kernel_module_bytes, kernel_upload
from jobs.models import Contributor, Kernel, Worker
from tenants.models import Tenant
from tenants.roles import Role
from tenants.tiers import Tier
from tests.factories import ContributorFactory, WorkerFactory
from tests.jobs.test_api_and_pages import VALID_KERNEL_WAT

pytestmark = pytest.mark.django_db


def _upload(tenant, owner, module: bytes, version: str = "1") -> Kernel:  # noqa: ANN001
    return kernel_upload(
        tenant=tenant,
        actor=owner,
        actor_role=Role.OWNER,
        name="mine",
        version=version,
        module=module,
        reducer="sum_u64",
        output_bytes=8,
    )


def test_two_tenants_can_upload_the_same_module(
    tenant, owner, other_tenant, other_owner, client, settings, tmp_path
):
    # given two Core tenants and one module
    settings.MEDIA_ROOT = tmp_path
    Tenant.objects.filter(pk__in=[tenant.pk, other_tenant.pk]).update(tier=Tier.CORE)
    tenant.refresh_from_db()
    other_tenant.refresh_from_db()
    module = wat2wasm(VALID_KERNEL_WAT)
    # when both upload it
    mine = _upload(tenant, owner, module)
    theirs = _upload(other_tenant, other_owner, module)
    # then both own a kernel with that hash, and workers still fetch it by hash
    digest = hashlib.sha256(module).hexdigest()
    assert (mine.sha256, theirs.sha256) == (digest, digest)
    assert {mine.tenant_id, theirs.tenant_id} == {tenant.pk, other_tenant.pk}
    _, token = dispatch.contributor_create_anonymous()
    response = client.get(f"/kernels/{digest}.wasm", HTTP_AUTHORIZATION=f"Worker {token}")
    assert response.status_code == 200
    assert response.content == module


def test_the_same_module_twice_in_one_tenant_is_refused(tenant, owner, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.CORE)
    tenant.refresh_from_db()
    module = wat2wasm(VALID_KERNEL_WAT)
    _upload(tenant, owner, module)
    with pytest.raises(ValidationError):
        _upload(tenant, owner, module, version="2")
    assert Kernel.objects.filter(tenant=tenant).count() == 1


def test_a_tenant_may_upload_a_builtin_module(tenant, owner, kernels, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.CORE)
    tenant.refresh_from_db()
    builtin = kernels["prime_count"]
    copy = _upload(tenant, owner, kernel_module_bytes(builtin))
    assert copy.sha256 == builtin.sha256
    assert Kernel.objects.filter(sha256=builtin.sha256).count() == 2


def test_a_pool_worker_token_cannot_be_claimed(owner, tenant):
    # given a tenant's private-pool worker whose token leaked
    pool = ContributorFactory(pool_tenant=tenant)
    worker = WorkerFactory(contributor=pool)
    token = dispatch.worker_token_issue(contributor=pool)
    # when someone claims it into a personal account
    with pytest.raises(ValueError, match="private worker pool"):
        dispatch.contributor_claim(user=owner, token=token)
    # then nothing moved and the pool keeps its token
    pool.refresh_from_db()
    worker.refresh_from_db()
    assert (pool.user_id, pool.pool_tenant_id, worker.contributor_id) == (None, tenant.pk, pool.pk)
    assert dispatch.worker_token_verify(token=token) == pool
    assert not Contributor.objects.filter(user=owner).exists()


def test_claiming_a_pool_token_through_the_api_is_a_clear_400(owner, tenant):
    token = dispatch.worker_token_issue(contributor=ContributorFactory(pool_tenant=tenant))
    client = APIClient()
    client.force_authenticate(owner)
    response = client.post("/api/v1/contributors/me/", {"token": token}, format="json")
    assert response.status_code == 400
    assert "private worker pool" in response.json()["error"]["fields"]["token"]
    assert Worker.objects.count() == 0


def test_a_training_module_is_refused_as_an_fc_kernel(
    tenant, owner, wasm_built, settings, tmp_path
):
    # given a Core tenant and the built 2NN training kernel, which speaks ABI v2
    from pathlib import Path

    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path)},
    }}  # fmt: skip
    Tenant.objects.filter(pk=tenant.pk).update(tier=Tier.CORE)
    tenant.refresh_from_db()
    module = (Path(__file__).resolve().parents[2] / "wasm" / "build" / "mlp.wasm").read_bytes()
    # when it is uploaded as an FC kernel
    with pytest.raises(ValidationError, match="ABI version 1"):
        _upload(tenant, owner, module)
    # then nothing was stored
    assert not Kernel.objects.filter(tenant=tenant).exists()
