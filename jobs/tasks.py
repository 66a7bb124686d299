"""Celery tasks of the dispatch and reduction planes. Each takes ids and is idempotent."""

from __future__ import annotations

from celery import shared_task

from jobs import dispatch, services


@shared_task(acks_late=True, autoretry_for=(OSError,), retry_backoff=True, max_retries=8)
def job_reduce(job_id: str) -> str:
    """Reduce a job whose tasks are all validated (a re-run after completion does nothing)."""
    return services.job_reduce(job_id=job_id).status


@shared_task(acks_late=True)
def lease_sweep() -> int:
    """Re-queue replicas whose lease expired."""
    return dispatch.lease_sweep()


@shared_task(acks_late=True)
def job_queue_fill(job_id: str) -> int:
    """Queue the rest of a started or resumed job's tasks, a chunk per transaction."""
    return services.job_queue_fill(job_id=job_id)


@shared_task(acks_late=True)
def job_queue_fill_all() -> int:
    """Queue what any running job has left to queue (a fill lost with its message)."""
    return services.job_queue_fill_all()


@shared_task(acks_late=True)
def job_counters_fold() -> int:
    """Fold the per-job counter deltas into the counters rows the director reads."""
    return services.job_counters_fold()


@shared_task(acks_late=True)
def job_deadline_sweep() -> int:
    """Fail jobs past their deadline."""
    return dispatch.job_deadline_sweep()


@shared_task(acks_late=True, autoretry_for=(OSError,), retry_backoff=True, max_retries=8)
def update_fold(upload_id: str) -> str:
    """Fold one completed FL update into its round (a re-run after the fold does nothing)."""
    from jobs.services.fl_rounds_fold import update_fold as fold

    return str(fold(upload_id=upload_id))


@shared_task(acks_late=True)
def round_sweep() -> int:
    """Close or fail FL rounds past their deadline; open rounds for jobs with none open."""
    from jobs.services.fl_rounds import round_sweep as sweep

    return sweep()
