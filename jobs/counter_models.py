"""Per-job counters: the director's numbers from one row, kept by the database itself.

``JobCounters`` holds, for one FC job, how many of its tasks are open, queued (open and
dispatchable), validated, failed and cancelled (known-answer checks excluded, as the tenant sees
them) and how many of its replicas are in each status, so the director reads them instead of
counting tasks and replicas every second.

Statement-level triggers on ``jobs_task`` and ``jobs_assignment`` (migration
``0014_job_counters``) turn every INSERT and UPDATE into one ``JobCounterDelta`` row per job: a
set-based increment, written in the transaction that made the change (a group-commit flush of 256
results adds a handful of rows; the job start that marks 60,000 tasks adds one; a rollback takes
them with it). No code path can forget them (claims, results, errors, lease sweeps, pauses and
cancels write tasks and replicas in many places).

Why deltas and not an ``UPDATE`` of the counters row: that row would be locked from a flush's
first statement to its commit, and two Daphnes' flushes, each holding task locks the other
wants, deadlocked on it (measured). Inserts never wait. ``job_counters_fold`` (Celery beat)
moves the deltas into the row; a reader adds the few not yet folded in the same statement
(``selectors.job_counters``), so the counters always equal a recount
(``tests/jobs/test_job_counters.py`` checks that after concurrent flushes). Deleting tasks or
replicas adds no delta (only a job's deletion does that, and it takes its counters with it).

Imported at the end of ``jobs.models`` so Django registers the models with the app.
"""

from __future__ import annotations

from django.db import models

from jobs.models import Job
from tenants.models import Tenant
from tenants.scoping import TenantOwnedModel

COUNTER_FIELDS = (
    "tasks_open",
    "tasks_queued",
    "tasks_validated",
    "tasks_failed",
    "tasks_cancelled",
    "replicas_running",
    "replicas_returned",
    "replicas_valid",
    "replicas_invalid",
    "replicas_error",
    "replicas_expired",
    "replicas_cancelled",
    "replicas_late",
)


class CounterColumns(TenantOwnedModel):
    """The counter columns (abstract)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    tasks_open = models.BigIntegerField(default=0)
    tasks_queued = models.BigIntegerField(default=0)
    tasks_validated = models.BigIntegerField(default=0)
    tasks_failed = models.BigIntegerField(default=0)
    tasks_cancelled = models.BigIntegerField(default=0)
    replicas_running = models.BigIntegerField(default=0)
    replicas_returned = models.BigIntegerField(default=0)
    replicas_valid = models.BigIntegerField(default=0)
    replicas_invalid = models.BigIntegerField(default=0)
    replicas_error = models.BigIntegerField(default=0)
    replicas_expired = models.BigIntegerField(default=0)
    replicas_cancelled = models.BigIntegerField(default=0)
    replicas_late = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class JobCounters(CounterColumns):
    """How many of a job's tasks and replicas are in each status, as of the last fold."""

    job = models.OneToOneField(
        Job, primary_key=True, on_delete=models.CASCADE, related_name="counters"
    )

    def __str__(self) -> str:
        return f"counters of {self.job_id}"


class JobCounterDelta(CounterColumns):
    """One statement's change to a job's counters, not yet folded into ``JobCounters``."""

    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="+")

    def __str__(self) -> str:
        return f"counter delta {self.pk} of {self.job_id}"
