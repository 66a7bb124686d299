"""The model registry: global model versions written through the default storage.

Every version is hashed as it is written and stored under a content-addressed key,
``models/<tenant>/<job>/<sha256>.f32`` (raw little-endian float32), on the filesystem by default
or S3 when a bucket is configured. The ``ModelVersion`` row is the metadata; the bytes never live
in PostgreSQL. The same bytes written twice land on the same key and are not rewritten.
"""

from __future__ import annotations

import hashlib
import json
from typing import IO, Any

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from jobs.models import Job, ModelVersion, Round


def model_storage_key(*, tenant_id: Any, job_id: Any, sha256: str) -> str:
    """Where a version's bytes live: one key per content, under the tenant and the job."""
    return f"models/{tenant_id}/{job_id}/{sha256}.f32"


def _store(key: str, data: bytes) -> None:
    # Content-addressed: an existing key already holds these bytes.
    if not default_storage.exists(key):
        saved = default_storage.save(key, ContentFile(data))
        if saved != key:  # the backend renamed instead of writing the key we own
            default_storage.delete(saved)
            raise RuntimeError(f"storage refused the content-addressed key {key}")


@transaction.atomic
def model_version_create(
    *,
    job: Job,
    weights: np.ndarray,
    version: int,
    round: Round | None = None,  # noqa: A002 - the model field's name
    metrics: dict | None = None,
) -> ModelVersion:
    """Store a global model (float32, shape (d,)) and record it as ``version`` of ``job``.

    The bytes are written before the row; a rollback leaves at most an unreferenced object under
    its hash, which the next write of the same model reuses.
    """
    data = np.ascontiguousarray(weights, dtype="<f4").tobytes()
    digest = hashlib.sha256(data).hexdigest()
    key = model_storage_key(tenant_id=job.tenant_id, job_id=job.pk, sha256=digest)
    _store(key, data)
    return ModelVersion.objects.create(
        tenant_id=job.tenant_id,
        job=job,
        version=version,
        sha256=digest,
        storage_key=key,
        size_bytes=len(data),
        round=round,
        metrics=metrics or {},
    )


def model_version_open(*, model_version: ModelVersion) -> IO[bytes]:
    """The stored bytes of a version, as a binary file (the caller closes it)."""
    return default_storage.open(model_version.storage_key, "rb")


def model_version_read(*, model_version: ModelVersion) -> np.ndarray:
    """A version's weights, checked against its hash; float32 of shape (d,)."""
    with model_version_open(model_version=model_version) as handle:
        data = handle.read()
    if hashlib.sha256(data).hexdigest() != model_version.sha256:
        raise ValueError(f"stored model {model_version} does not match its hash")
    return np.frombuffer(data, dtype="<f4").copy()


def model_version_onnx(*, model_version: ModelVersion) -> bytes:
    """A version as an ONNX model (opset in ``jobs.federated.export``): the job's training kernel
    and layer sizes give the graph, the stored weights (checked against their hash) its tensors."""
    from jobs.federated.client import DEFAULT_BUILD_DIR
    from jobs.federated.export import Architecture, to_onnx

    config = Job.objects.unscoped().select_related("fl_config").get(pk=model_version.job_id)
    config = config.fl_config
    manifest = json.loads((DEFAULT_BUILD_DIR / "manifest.json").read_text())
    entry = next(k for k in manifest["training_kernels"] if k["name"] == config.model_kernel)
    architecture = Architecture.from_manifest(entry, tuple(config.model_sizes))
    return to_onnx(architecture, model_version_read(model_version=model_version))


def latest_version(*, job: Job) -> ModelVersion:
    """The job's newest global model."""
    return ModelVersion.objects.for_tenant(job.tenant).filter(job=job).order_by("-version")[0]
