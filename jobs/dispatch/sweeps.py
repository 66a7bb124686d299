"""Sweeps run by Celery beat: expired leases go back to the queue, overdue jobs fail."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from jobs.dispatch.results import replica_release, trust_reset
from jobs.models import Assignment, AssignmentStatus, Job, JobStatus, Task, TaskStatus
from jobs.services import job_event, replicas_cancel_running


def lease_sweep(*, batch: int = 500) -> int:
    """Expire leases past their deadline and requeue their tasks. Returns how many expired."""
    expired = 0
    while True:
        with transaction.atomic():
            due = list(
                Assignment.objects.unscoped()
                .select_for_update(skip_locked=True)
                .filter(status=AssignmentStatus.ASSIGNED, lease_expires_at__lt=timezone.now())
                .only("id", "task_id", "worker_id")[:batch]
            )
            for assignment in due:
                Assignment.objects.unscoped().filter(pk=assignment.pk).update(
                    status=AssignmentStatus.EXPIRED
                )
                replica_release(task_id=assignment.task_id)
                trust_reset(assignment.worker_id, field_name="expired_replicas")
        expired += len(due)
        if len(due) < batch:
            return expired


def job_deadline_sweep() -> int:
    """Fail running jobs whose deadline passed."""
    failed = 0
    for job_id in (
        Job.objects.unscoped()
        .filter(status__in=(JobStatus.RUNNING, JobStatus.PAUSED), deadline__lt=timezone.now())
        .values_list("id", flat=True)
    ):
        with transaction.atomic():
            job = Job.objects.unscoped().select_for_update().get(pk=job_id)
            if job.is_finished or job.deadline is None or job.deadline >= timezone.now():
                continue
            job.status = JobStatus.FAILED
            job.status_reason = "Deadline passed before every task was validated"
            job.completed_at = timezone.now()
            job.save(update_fields=["status", "status_reason", "completed_at"])
            Task.objects.unscoped().filter(job=job, status=TaskStatus.OPEN).update(
                status=TaskStatus.CANCELLED, dispatchable=False
            )
            replicas_cancel_running(job=job, reason="deadline")
            job_event(job=job, kind="failed", message=job.status_reason)
            failed += 1
    return failed
