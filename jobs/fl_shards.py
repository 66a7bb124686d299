"""What an FL worker downloads besides the weights: its public data shard and the training
kernel's module, both same-origin and for worker tokens (``Authorization: Worker <token>``).

A shard is a client's part of a job's *public* partition (``DataSource.PUBLIC_PARTITION``,
marked not private): contributors' own data never passes through here. It is rebuilt
deterministically from the job's data set, partition and seed with ``jobs.federated`` (the
train part of a stratified 80/20 split; the 20 % stay held out for evaluation), so every
Daphne process serves the same bytes; they are kept per job in a small in-process cache and
named by their sha256 (the ETag).

Body (little endian, docs/federated-learning.md): a 16-byte header ``b"CCSD"``, u32 samples n,
u32 features f, u32 classes; then X as f32[n·f] (row-major, values in [0, 1]) and Y as i32[n].
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.core.files.storage import default_storage
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from jobs import dispatch
from jobs.fl_models import DataSource
from jobs.models import Job, JobStatus
from jobs.services.fl_data import job_partition_shards
from jobs.services.fl_rounds_scaffold import control_key

SHARD_MAGIC = b"CCSD"
SHARD_HEADER = struct.Struct("<4sIII")
CACHED_JOBS = 8


@dataclass(frozen=True, slots=True)
class Shard:
    """One client's encoded shard and its hash."""

    body: bytes
    sha256: str


def encode_shard(x: np.ndarray, y: np.ndarray, classes: int) -> bytes:
    """Header, X (f32[n, f]) and Y (i32[n]) as one little-endian body."""
    x32 = np.ascontiguousarray(x, dtype="<f4")
    y32 = np.ascontiguousarray(y, dtype="<i4")
    n, features = x32.shape
    return SHARD_HEADER.pack(SHARD_MAGIC, n, features, classes) + x32.tobytes() + y32.tobytes()


def decode_shard(body: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """The inverse of ``encode_shard``: X f32[n, f], Y i32[n] and the class count."""
    magic, n, features, classes = SHARD_HEADER.unpack_from(body)
    if magic != SHARD_MAGIC or len(body) != SHARD_HEADER.size + 4 * n * features + 4 * n:
        raise ValueError("not a shard body")
    x = np.frombuffer(body, "<f4", n * features, SHARD_HEADER.size).reshape(n, features)
    y = np.frombuffer(body, "<i4", n, SHARD_HEADER.size + 4 * n * features)
    return x, y, classes


_cache: OrderedDict[str, list[Shard]] = OrderedDict()
_cache_lock = threading.Lock()


def job_shards(job: Job) -> list[Shard]:
    """A job's encoded shards, built once per process and kept for the last few jobs."""
    key = str(job.pk)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    built = [encode_shard(x, y, classes) for x, y, classes in job_partition_shards(job)]
    shards = [Shard(body, hashlib.sha256(body).hexdigest()) for body in built]
    with _cache_lock:
        _cache[key] = shards
        while len(_cache) > CACHED_JOBS:
            _cache.popitem(last=False)
    return shards


@functools.cache
def _training_manifest() -> dict[str, dict[str, Any]]:
    from jobs.federated.client import DEFAULT_BUILD_DIR

    manifest = json.loads((DEFAULT_BUILD_DIR / "manifest.json").read_text())
    entries = [*manifest.get("training_kernels", []), *manifest.get("analytics_kernels", [])]
    return {entry["name"]: entry for entry in entries}


def training_kernel_sha256(name: str) -> str:
    """The sha256 of the built training kernel ``name`` (logreg, mlp, cnn, or analytics)."""
    return _training_manifest()[name]["sha256"]


def _unauthorized(request: HttpRequest) -> JsonResponse | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme == "Worker" and dispatch.worker_token_verify(token=token.strip()) is not None:
        return None
    return JsonResponse(
        {"error": {"code": "unauthorized", "message": "worker token required"}}, status=401
    )


def _not_found(message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": "not_found", "message": message}}, status=404)


def round_closed() -> JsonResponse:
    """409 ``round_closed``: what a worker fetching for a job that has stopped running gets (a
    pause or an end closed its round while the worker was fetching); the worker records the round
    as ``late``, as for an upload the closed round refuses, not as a failed fetch."""
    return JsonResponse(
        {"error": {"code": "round_closed", "message": "the job is not running: its round closed"}},
        status=409,
    )


def _fl_job_unscoped(job_id: Any) -> Job | None:
    """An FL job of any tenant and status: the worker plane crosses tenants, as for the weights."""
    return (
        Job.objects.unscoped()
        .select_related("fl_config")
        .filter(pk=job_id, fl_config__isnull=False)
        .first()
    )


def _not_running(job: Job | None, missing: str) -> JsonResponse | None:
    """None for a running job; 409 ``round_closed`` for one that ran and no longer runs
    (paused, reducing or ended); 404 ``missing`` for an unknown job or a draft."""
    if job is None or job.status == JobStatus.DRAFT:
        return _not_found(missing)
    if job.status != JobStatus.RUNNING:
        return round_closed()
    return None


@require_http_methods(["GET"])
def shard(request: HttpRequest, job_id: Any, client_index: int) -> HttpResponse:
    """A client's shard of a running job's public partition (409 ``round_closed`` once the job
    stopped running, 404 for anything else)."""
    denied = _unauthorized(request)
    if denied is not None:
        return denied
    job = _fl_job_unscoped(job_id)
    refused = _not_running(job, "no such shard")
    if refused is not None:
        return refused
    config = job.fl_config
    if (
        config.data_source != DataSource.PUBLIC_PARTITION
        or config.data_is_private
        or not 0 <= client_index < (config.partition_clients or 0)
    ):
        return _not_found("no such shard")
    chosen = job_shards(job)[client_index]
    etag = f'"{chosen.sha256}"'
    if request.headers.get("If-None-Match") == etag:
        return HttpResponse(status=304)
    response = HttpResponse(chosen.body, content_type="application/octet-stream")
    response["ETag"] = etag
    response["X-Content-SHA256"] = chosen.sha256
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_http_methods(["GET"])
def training_kernel(request: HttpRequest, sha256: str) -> HttpResponse:
    """A built training kernel's module by hash (the ``round_invite`` names it)."""
    denied = _unauthorized(request)
    if denied is not None:
        return denied
    from jobs.federated.client import DEFAULT_BUILD_DIR

    entry = next((e for e in _training_manifest().values() if e["sha256"] == sha256), None)
    if entry is None:
        return _not_found("no such training kernel")
    data = (DEFAULT_BUILD_DIR / entry["file"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        return _not_found("the build does not match its manifest")
    response = HttpResponse(data, content_type="application/wasm")
    response["ETag"] = f'"{sha256}"'
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response


@require_http_methods(["GET"])
def control_variate(request: HttpRequest, job_id: Any, sha256: str) -> HttpResponse:
    """A SCAFFOLD control variate (c or a partition client's cᵢ, f32[d]) of a running job, by
    hash: the invite names it next to the weights."""
    denied = _unauthorized(request)
    if denied is not None:
        return denied
    job = _fl_job_unscoped(job_id)
    refused = _not_running(job, "no such control variate")
    if refused is not None:
        return refused
    key = control_key(job=job, sha256=sha256)
    if not default_storage.exists(key):
        return _not_found("no such control variate")
    etag = f'"{sha256}"'
    if request.headers.get("If-None-Match") == etag:
        return HttpResponse(status=304)
    with default_storage.open(key, "rb") as handle:
        response = HttpResponse(handle.read(), content_type="application/octet-stream")
    response["ETag"] = etag
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response
