"""FL worker downloads: a client's shard of a running job's public partition, and the training
kernels by hash, for worker tokens only; a job that stopped running is a 409 ``round_closed``,
anything else a 401 or a 404."""

from __future__ import annotations

import hashlib
import json
import uuid

import numpy as np
import pytest
from django.test import Client

from jobs import dispatch
from jobs.fl_shards import decode_shard, training_kernel_sha256
from jobs.models import JobStatus
from jobs.services.fl_data import partition_shards
from tests.factories import ContributorFactory
from tests.jobs.fl_helpers import fl_job_unchecked

pytestmark = pytest.mark.django_db


@pytest.fixture
def auth() -> dict[str, str]:
    token = dispatch.worker_token_issue(contributor=ContributorFactory())
    return {"HTTP_AUTHORIZATION": f"Worker {token}"}


def test_a_worker_gets_its_shard_of_the_public_partition(tenant, auth):
    # given a running FL job on digits, IID over 10 clients
    job, _ = fl_job_unchecked(tenant)
    # when a worker asks for client 4's shard
    response = Client().get(f"/fl/shards/{job.pk}/4.bin", **auth)
    # then it is the deterministic partition's part, named by its hash
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    x, y, classes = decode_shard(response.content)
    expected_x, expected_y, _ = partition_shards(
        dataset="digits", partition="iid", clients=10, seed=job.seed, alpha=None, per_client=2
    )[4]
    assert np.array_equal(x, expected_x)
    assert np.array_equal(y, expected_y)
    assert (classes, x.shape[1]) == (10, 64)
    digest = hashlib.sha256(response.content).hexdigest()
    assert response["ETag"] == f'"{digest}"'
    again = Client().get(f"/fl/shards/{job.pk}/4.bin", HTTP_IF_NONE_MATCH=f'"{digest}"', **auth)
    assert again.status_code == 304


def test_shards_need_a_worker_token(tenant):
    job, _ = fl_job_unchecked(tenant)
    response = Client().get(f"/fl/shards/{job.pk}/0.bin")
    assert response.status_code == 401
    assert json.loads(response.content)["error"]["code"] == "unauthorized"


def test_private_data_draft_jobs_and_unknown_clients_have_no_shard(tenant, other_tenant, auth):
    job, _ = fl_job_unchecked(tenant)
    assert Client().get(f"/fl/shards/{job.pk}/10.bin", **auth).status_code == 404
    draft, _ = fl_job_unchecked(other_tenant, status=JobStatus.DRAFT)
    assert Client().get(f"/fl/shards/{draft.pk}/0.bin", **auth).status_code == 404
    assert Client().get(f"/fl/shards/{uuid.uuid4()}/0.bin", **auth).status_code == 404
    config = job.fl_config
    config.data_source, config.data_is_private = "contributor_local", True
    config.save(update_fields=["data_source", "data_is_private"])
    assert Client().get(f"/fl/shards/{job.pk}/0.bin", **auth).status_code == 404


@pytest.mark.parametrize("status", [JobStatus.PAUSED, JobStatus.COMPLETED, JobStatus.CANCELLED])
def test_a_worker_fetching_for_a_job_that_stopped_is_told_its_round_closed(tenant, auth, status):
    # given a worker invited to a round whose job is then paused or ended during its fetches
    job, _ = fl_job_unchecked(tenant, status=status)
    # when it asks for its shard or a control variate
    for url in (f"/fl/shards/{job.pk}/0.bin", f"/fl/controls/{job.pk}/{'0' * 64}.f32"):
        response = Client().get(url, **auth)
        # then the answer says the round closed (the worker records it late), not "no such shard"
        assert response.status_code == 409, url
        assert json.loads(response.content)["error"]["code"] == "round_closed"


def test_a_training_kernel_is_served_by_its_hash(auth):
    sha256 = training_kernel_sha256("logreg")
    response = Client().get(f"/fl/kernels/{sha256}.wasm", **auth)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == sha256
    assert Client().get(f"/fl/kernels/{'0' * 64}.wasm", **auth).status_code == 404
    assert Client().get(f"/fl/kernels/{sha256}.wasm").status_code == 401
