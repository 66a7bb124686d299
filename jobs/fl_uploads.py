"""HTTP endpoints of FL update uploads, for workers (``Authorization: Worker <token>``).

Thin: authenticate the worker token, parse, call one upload service, answer JSON. Chunks travel as
raw bytes (``application/octet-stream``), never as base64 JSON; the protocol is in
``docs/federated-learning.md``. A participation or upload of another contributor (and so of
another tenant's round) is a 404.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from jobs import dispatch
from jobs.fl_artifact_models import UpdateUpload
from jobs.models import Contributor
from jobs.services.fl_rounds_cohort import MAX_CHUNK_BYTES
from jobs.services.fl_rounds_uploads import (
    UploadError,
    update_upload_chunk_put,
    update_upload_complete,
    update_upload_create,
    update_upload_get,
)

MAX_JSON_BYTES = 4096


def _error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _contributor(request: HttpRequest) -> Contributor | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Worker":
        return None
    return dispatch.worker_token_verify(token=token.strip())


def _state(upload: UpdateUpload) -> dict[str, Any]:
    return {
        "upload": str(upload.pk),
        "status": upload.status,
        "total_bytes": upload.total_bytes,
        "chunk_size": upload.chunk_size,
        "chunk_count": upload.chunk_count,
        "chunks_received": sorted(int(index) for index in upload.chunks),
        "rejection": (
            {"code": upload.rejection_code, "message": upload.rejection_message}
            if upload.rejection_code
            else None
        ),
    }


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UploadError("bad_request", f"{name} must be a non-negative integer")
    return value


@csrf_exempt
@require_http_methods(["POST"])
def upload_create(request: HttpRequest) -> HttpResponse:
    """Start or resume the upload of a participation's update → its id and received chunks."""
    contributor = _contributor(request)
    if contributor is None:
        return _error("unauthorized", "worker token required", 401)
    try:
        if len(request.body) > MAX_JSON_BYTES:
            raise UploadError("bad_request", "body too large")
        try:
            body = json.loads(request.body or b"{}")
        except ValueError as exc:
            raise UploadError("bad_request", "body must be JSON") from exc
        if not isinstance(body, dict):
            raise UploadError("bad_request", "body must be a JSON object")
        upload = update_upload_create(
            contributor=contributor,
            participation_id=_int(body, "participation"),
            total_bytes=_int(body, "total_bytes"),
            chunk_size=_int(body, "chunk_size"),
            sha256=str(body.get("sha256", "")),
            base_version=_int(body, "base_version"),
        )
    except UploadError as exc:
        return _error(exc.code, exc.message, exc.status)
    return JsonResponse(_state(upload), status=201)


def _upload_or_error(request: HttpRequest, upload_id: Any) -> UpdateUpload | JsonResponse:
    contributor = _contributor(request)
    if contributor is None:
        return _error("unauthorized", "worker token required", 401)
    try:
        return update_upload_get(contributor=contributor, upload_id=upload_id)
    except UploadError as exc:
        return _error(exc.code, exc.message, exc.status)


@require_http_methods(["GET"])
def upload_state(request: HttpRequest, upload_id: Any) -> HttpResponse:
    """Which chunks are stored: a reconnected worker sends only the others."""
    upload = _upload_or_error(request, upload_id)
    if isinstance(upload, JsonResponse):
        return upload
    return JsonResponse(_state(upload))


@csrf_exempt
@require_http_methods(["PUT"])
def upload_chunk(request: HttpRequest, upload_id: Any, index: int) -> HttpResponse:
    """Store one chunk (raw bytes, checked against ``X-Chunk-SHA256``); a re-send is a no-op."""
    upload = _upload_or_error(request, upload_id)
    if isinstance(upload, JsonResponse):
        return upload
    data = request.read(MAX_CHUNK_BYTES + 1)
    if len(data) > MAX_CHUNK_BYTES:
        return _error("too_large", f"a chunk is at most {MAX_CHUNK_BYTES} bytes", 413)
    try:
        outcome = update_upload_chunk_put(
            upload=upload,
            index=index,
            data=data,
            chunk_sha256=request.headers.get("X-Chunk-SHA256", ""),
        )
    except UploadError as exc:
        return _error(exc.code, exc.message, exc.status)
    return JsonResponse({"chunk": outcome.index, "stored": outcome.stored})


@csrf_exempt
@require_http_methods(["POST"])
def upload_complete(request: HttpRequest, upload_id: Any) -> HttpResponse:
    """Check the whole update and queue its fold; answers the upload's state (202 if queued)."""
    upload = _upload_or_error(request, upload_id)
    if isinstance(upload, JsonResponse):
        return upload
    try:
        upload = update_upload_complete(upload=upload)
    except UploadError as exc:
        return _error(exc.code, exc.message, exc.status)
    if upload.rejection_code and upload.status == "rejected":
        return JsonResponse(_state(upload), status=422)
    return JsonResponse(_state(upload), status=202)
