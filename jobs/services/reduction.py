"""Finishing a job: the move to reducing once every task is validated, the reduction of the
canonical outputs, and the result summary the kernel's manifest declares."""

from __future__ import annotations

import hashlib
from typing import Any

from django.db import transaction
from django.utils import timezone

from ccgsc_worker import abi
from jobs.kernel_models import Reducer
from jobs.manifest import records_limit, summary_derive
from jobs.models import Job, JobStatus, Task, TaskStatus
from jobs.services.lifecycle import job_event, replicas_cancel_running


def _reducer_k(job: Job) -> int | None:
    """How many records a best-k job keeps, from the parameter its manifest names."""
    if job.kernel.reducer != Reducer.BEST_K:
        return None
    return records_limit(job.kernel.output_layout or {}, job.kernel.params_by_name(job.params))


def job_finish_if_done(job_id: Any) -> bool:
    """Under the job's row lock: if every real task is validated, move to reducing once.

    Returns True when this call made the transition (and so queued the reduction).
    """
    job = Job.objects.unscoped().select_for_update().get(pk=job_id)
    if (
        job.status not in (JobStatus.RUNNING, JobStatus.PAUSED)
        or job.tasks_validated < job.task_count
    ):
        return False
    job.status = JobStatus.REDUCING
    job.save(update_fields=["status"])
    Task.objects.unscoped().filter(job=job, status=TaskStatus.OPEN).update(
        status=TaskStatus.CANCELLED, dispatchable=False
    )
    replicas_cancel_running(job=job, reason="job_complete")
    job_event(job=job, kind="reducing", message="All tasks validated; reducing results")
    from jobs.tasks import job_reduce  # tasks import services: the Celery task is looked up late

    transaction.on_commit(lambda: job_reduce.delay(str(job.pk)))
    return True


@transaction.atomic
def job_reduce(*, job_id: Any) -> Job:
    """Reduce the canonical results of a job's tasks, in task order. Idempotent."""
    job = (
        Job.objects.unscoped()
        .select_for_update(of=("self",))
        .select_related("kernel")
        .get(pk=job_id)
    )
    if job.status != JobStatus.REDUCING:
        return job
    outputs = list(
        Task.objects.unscoped()
        .filter(job=job, known_answer_sha256="", status=TaskStatus.VALIDATED)
        .order_by("index")
        .values_list("canonical_output", flat=True)
    )
    if len(outputs) != job.task_count:
        raise RuntimeError(
            f"job {job.pk}: {len(outputs)} canonical results for {job.task_count} tasks"
        )
    k = _reducer_k(job)
    try:
        reduced = abi.reduce_outputs(job.kernel.reducer, [bytes(o) for o in outputs], k=k)
    except (abi.OutputError, ValueError) as exc:
        # Canonical results that cannot be combined mean agreeing workers were wrong together.
        job.status = JobStatus.FAILED
        job.status_reason = f"results could not be reduced: {exc}"[:300]
        job.completed_at = timezone.now()
        job.save(update_fields=["status", "status_reason", "completed_at"])
        job_event(job=job, kind="failed", message=job.status_reason)
        return job
    job.result_bytes = reduced
    job.result_sha256 = hashlib.sha256(reduced).hexdigest()
    job.result = result_summary(job=job, reduced=reduced)
    job.status = JobStatus.COMPLETED
    job.completed_at = timezone.now()
    job.save(update_fields=["result_bytes", "result_sha256", "result", "status", "completed_at"])
    job_event(job=job, kind="completed", message="Job completed")
    return job


def result_summary(*, job: Job, reduced: bytes) -> dict[str, Any]:
    """The JSON result of a job: the reduced output decoded, plus what the kernel's manifest
    declares it means (``Kernel.summary``, interpreted by ``jobs.manifest``)."""
    value = abi.output_to_json(job.kernel.reducer, reduced, k=_reducer_k(job))
    return {
        "reducer": job.kernel.reducer,
        "value": value,
        **summary_derive(job.kernel.summary or {}, value, job.kernel.params_by_name(job.params)),
    }
