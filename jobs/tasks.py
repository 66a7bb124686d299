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


# Nobody waits for a fill's result: ignoring it spares each request the result backend's
# subscription (a connection and a SUBSCRIBE in the Daphne that asks) and the worker its store.
@shared_task(acks_late=True, ignore_result=True)
def job_queue_fill(job_id: str) -> int:
    """Top up a running job's queue to the high-water mark (asked for when it ran low)."""
    return services.job_queue_fill(job_id=job_id)


@shared_task(acks_late=True)
def job_queue_fill_all() -> int:
    """Top up every running job's queue (the safety net of a fill lost with its message)."""
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
    from jobs.services.fl_rounds_sweep import round_sweep as sweep

    return sweep()


@shared_task(acks_late=True, autoretry_for=(OSError,), retry_backoff=True, max_retries=8)
def model_version_evaluate(version_id: str) -> dict | None:
    """Evaluate an FL model version on its job's held-out set (a re-run returns the stored
    result)."""
    from jobs.services.fl_evaluation import model_version_evaluate as evaluate

    return evaluate(version_id=version_id)


@shared_task(acks_late=True)
def secagg_phase_close(round_id: int, phase: str) -> str:
    """Close a secure round's phase at its deadline."""
    from jobs.services.fl_secagg_phases import secagg_phase_close as close

    return close(round_id=round_id, phase=phase)


@shared_task(acks_late=True, autoretry_for=(OSError,), retry_backoff=True, max_retries=8)
def secagg_unmask(round_id: int) -> str:
    """Reconstruct a secure round's secrets and remove its masks (or fan out the ranges)."""
    from jobs.services.fl_secagg_unmask import secagg_unmask as unmask

    return unmask(round_id=round_id)


@shared_task(acks_late=True, autoretry_for=(OSError,), retry_backoff=True, max_retries=8)
def secagg_unmask_range(round_id: int, start: int, stop: int) -> str:
    """Remove the masks of one coordinate range of a secure round's sum."""
    from jobs.services.fl_secagg_unmask import secagg_unmask_range as unmask_range

    return unmask_range(round_id=round_id, start=start, stop=stop)


@shared_task(acks_late=True)
def secagg_sweep() -> int:
    """Backstop of the secure rounds' phase deadlines and lost unmask tasks."""
    from jobs.services.fl_secagg_phases import secagg_sweep as sweep

    return sweep()
