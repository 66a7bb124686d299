"""Model version downloads: one response builder for the tenant's pages, its API and workers."""

from __future__ import annotations

from django.http import FileResponse, HttpRequest, HttpResponse

from jobs.models import ModelVersion
from jobs.services.model_registry import model_version_open

F32_CONTENT_TYPE = "application/octet-stream"


ONNX_CONTENT_TYPE = "application/onnx"


def model_version_response(
    request: HttpRequest, model_version: ModelVersion, *, filename: str | None = None
) -> HttpResponse:
    """The version's bytes, streamed from storage. The ETag is the content hash, so a cached
    copy is valid forever (``immutable``); ``If-None-Match`` answers 304 without touching
    storage. With ``filename``, the browser saves it as an attachment."""
    etag = f'"{model_version.sha256}"'
    if request.headers.get("If-None-Match") == etag:
        response = HttpResponse(status=304)
    else:
        response = FileResponse(
            model_version_open(model_version=model_version),
            content_type=F32_CONTENT_TYPE,
            as_attachment=filename is not None,
            filename=filename or "",
        )
        response["Content-Length"] = str(model_version.size_bytes)
        if filename is None and response.has_header("Content-Disposition"):
            del response["Content-Disposition"]  # named after the storage key, which is ours
    response["ETag"] = etag
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    response["X-Content-SHA256"] = model_version.sha256
    return response


def model_version_filename(model_version: ModelVersion) -> str:
    """``<job>-v<version>-<hash prefix>.f32``: the name a downloaded version is saved under."""
    return f"{model_version.job_id}-v{model_version.version}-{model_version.sha256[:12]}.f32"


def onnx_response(model_version: ModelVersion) -> HttpResponse:
    """The version as an ONNX file attachment (built on request; the weights are small)."""
    from jobs.services.model_registry import model_version_onnx

    response = HttpResponse(
        model_version_onnx(model_version=model_version), content_type=ONNX_CONTENT_TYPE
    )
    name = model_version_filename(model_version).removesuffix(".f32") + ".onnx"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["X-Model-SHA256"] = model_version.sha256
    return response
