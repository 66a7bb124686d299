"""Job services: creation (FC and FL), lifecycle (controls and events) and reduction.

The package re-exports the names the rest of the project uses, so ``from jobs import services``
keeps working whichever module a service lives in.
"""

from jobs.services.counters import job_counters_fold
from jobs.services.creation import (
    KNOWN_ANSWER_EVERY,
    MAX_INDEX,
    MAX_KNOWN_ANSWERS,
    MAX_SEED,
    JobSpec,
    job_create,
)
from jobs.services.fl_creation import FlJobSpec, fl_job_create, fl_job_validate
from jobs.services.lifecycle import (
    job_admit,
    job_cancel,
    job_control,
    job_event,
    job_pause,
    job_pause_system,
    job_queue_fill,
    job_queue_fill_all,
    job_resume,
    job_start,
    replicas_cancel_running,
)
from jobs.services.reduction import job_finish_if_done, job_reduce, result_summary

__all__ = [
    "KNOWN_ANSWER_EVERY",
    "MAX_INDEX",
    "MAX_KNOWN_ANSWERS",
    "MAX_SEED",
    "FlJobSpec",
    "JobSpec",
    "fl_job_create",
    "fl_job_validate",
    "job_admit",
    "job_cancel",
    "job_control",
    "job_counters_fold",
    "job_create",
    "job_event",
    "job_finish_if_done",
    "job_pause",
    "job_pause_system",
    "job_queue_fill",
    "job_queue_fill_all",
    "job_reduce",
    "job_resume",
    "job_start",
    "replicas_cancel_running",
    "result_summary",
]
