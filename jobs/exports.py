"""A job's result as a JSON document or a CSV file."""

from __future__ import annotations

import csv
import io
from typing import Any

from django.http import HttpResponse

from jobs.metering import metering
from jobs.models import Job, JobStatus


def _unpaid_cents(job: Job) -> int:
    return metering().withheld_cents(job=job)


def job_result_document(job: Job) -> dict[str, Any]:
    """Everything needed to use or verify a result: inputs, status and the reduced value.

    A result whose work is not paid for yet is withheld, with what is owed.
    """
    unpaid = _unpaid_cents(job)
    withheld = job.status == JobStatus.COMPLETED and unpaid > 0
    return {
        "job": str(job.pk),
        "name": job.name,
        "status": job.status,
        "kernel": {
            "name": job.kernel.name,
            "version": job.kernel.version,
            "sha256": job.kernel.sha256,
        },
        "range": [job.range_start, job.range_end],
        "chunk_size": job.chunk_size,
        "seed": job.seed,
        "params": job.params,
        "quorum": job.quorum,
        "tasks": job.task_count,
        "result": job.result if job.status == JobStatus.COMPLETED and not withheld else None,
        "result_sha256": (job.result_sha256 or None) if not withheld else None,
        "unpaid_cents": unpaid,
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
    }


def job_result_rows(job: Job) -> list[list[Any]]:
    """The result as a table: one row per value (sum vectors) or per point (best-k)."""
    result = job.result or {}
    if "best" in result:
        return [["rank", "index", "x", "y", "value"]] + [
            [rank + 1, p["index"], p["x"], p["y"], p["value"]]
            for rank, p in enumerate(result["best"])
        ]
    value = result.get("value")
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return [["rank", "index", "value"]] + [
            [i + 1, v["index"], v["value"]] for i, v in enumerate(value)
        ]
    rows: list[list[Any]] = [["field", "value"]]
    for key, item in result.items():
        if key in ("value", "reducer"):
            continue
        rows.append([key, item])
    if isinstance(value, list):
        rows.extend([f"value[{i}]", v] for i, v in enumerate(value))
    return rows


def job_result_csv_response(job: Job) -> HttpResponse:
    """A CSV download of the result."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if job.status != JobStatus.COMPLETED or _unpaid_cents(job):
        writer.writerow(["status", job.status])
        writer.writerow(["unpaid_cents", _unpaid_cents(job)])
    else:
        writer.writerows(job_result_rows(job))
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}.csv"'
    return response
