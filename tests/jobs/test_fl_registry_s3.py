"""The model registry on a real S3 endpoint: moto's S3 server on loopback, driven through
django-storages exactly as production drives a bucket."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import time
import urllib.error
import urllib.request

import boto3
import numpy as np
import pytest
from django.core.files.storage import default_storage
from storages.backends.s3 import S3Storage

from jobs.models import ModelVersion
from jobs.services import model_registry
from jobs.services.fl_init import initial_weights
from jobs.services.model_registry import model_version_create, model_version_read
from tenants.tiers import Tier
from tests.jobs.fl_helpers import fl_job
from tests.servers import free_port

pytestmark = pytest.mark.django_db

BUCKET = "ccgsc-models"
# moto accepts any credentials; these name no real account.
FAKE_CREDENTIALS = {"access_key": "testing", "secret_key": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on a free loopback port for this module."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # it answers: up
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


@pytest.fixture
def s3_storage(settings, s3_endpoint):
    """The default storage pointed at a fresh bucket of the moto server."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=FAKE_CREDENTIALS["access_key"],
        aws_secret_access_key=FAKE_CREDENTIALS["secret_key"],
    )
    client.create_bucket(Bucket=BUCKET)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "endpoint_url": s3_endpoint,
                "region_name": "us-east-1",
                "default_acl": None,
                "file_overwrite": False,
                "querystring_auth": True,
                **FAKE_CREDENTIALS,
            },
        },
    }
    yield client
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    for item in listed:
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def test_versions_are_written_hashed_read_back_and_downloaded_from_s3(
    s3_storage, api_client, tenant
):
    tenant.tier = Tier.ENTERPRISE
    tenant.save(update_fields=["tier"])

    job = fl_job(tenant, seed=11)
    assert isinstance(default_storage._wrapped, S3Storage)
    version = ModelVersion.objects.for_tenant(tenant).get(job=job)

    # Written: the object sits under its content address, and its bytes hash to the row's sha256.
    stored = s3_storage.get_object(Bucket=BUCKET, Key=version.storage_key)["Body"].read()
    expected = initial_weights("logreg", [64, 10], 11)
    assert version.storage_key == f"models/{tenant.pk}/{job.pk}/{version.sha256}.f32"
    assert hashlib.sha256(stored).hexdigest() == version.sha256
    assert stored == expected.tobytes()
    # Read back through the registry.
    np.testing.assert_array_equal(model_version_read(model_version=version), expected)
    # Downloaded through the view.
    response = api_client.get(f"/api/v1/model-versions/{version.pk}/download/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == stored
    assert response["ETag"] == f'"{version.sha256}"'


def test_each_version_is_one_object_under_its_hash_and_rewriting_it_adds_none(s3_storage, tenant):
    tenant.tier = Tier.ENTERPRISE
    tenant.save(update_fields=["tier"])
    job = fl_job(tenant, seed=12)
    first = job.model_versions.get()

    weights = model_version_read(model_version=first)
    second = model_version_create(job=job, weights=weights + 1, version=1)
    keys = [o["Key"] for o in s3_storage.list_objects_v2(Bucket=BUCKET)["Contents"]]

    assert sorted(keys) == sorted([first.storage_key, second.storage_key])
    assert model_version_read(model_version=second)[0] == weights[0] + 1

    model_registry._store(first.storage_key, weights.tobytes())
    again = [o["Key"] for o in s3_storage.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert sorted(again) == sorted(keys)
