"""The deadline sweep behind FL and analytics rounds (Celery beat, ``jobs.tasks.round_sweep``):
it re-queues folds a killed Celery worker lost, replaces invitees that dropped out of open rounds
before uploading, closes or fails open rounds past their deadline, and opens a round for running
jobs that have none (nobody was eligible when the last closed)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from jobs.fl_artifact_models import UpdateUpload, UploadStatus
from jobs.fl_models import FlMode, Round, RoundStatus
from jobs.models import Job, JobStatus
from jobs.services.fl_rounds import round_close, round_open
from jobs.services.fl_rounds_replace import dropouts_replace
from tenants.tiers import JobKind

# A completed upload not folded after this long lost its Celery task: the sweeper re-queues it.
FOLD_GRACE_SECONDS = 30


def round_sweep(*, now: Any = None) -> int:
    """Re-queue folds a killed Celery worker lost, replace invitees that dropped out of open
    rounds, close or fail open rounds past their deadline, and open a round for running FL jobs
    with none open (empty cohorts); returns the uploads, invitees and rounds acted on."""
    from jobs import tasks  # the task module imports the services

    now = now or timezone.now()
    acted = 0
    # A completed upload is folded within moments; one still waiting after a grace lost its task
    # (the fold is idempotent, so a duplicate of a slow one is harmless).
    stuck = UpdateUpload.objects.unscoped().filter(
        status=UploadStatus.COMPLETE, completed_at__lte=now - timedelta(seconds=FOLD_GRACE_SECONDS)
    )
    for upload_id in stuck.values_list("pk", flat=True):
        tasks.update_fold.delay(str(upload_id))
        acted += 1
    acted += dropouts_replace(now=now)
    due = Round.objects.unscoped().filter(status=RoundStatus.OPEN, deadline__lte=now)
    for round_id in due.values_list("pk", flat=True):
        if round_close(round_id=round_id, now=now).status != RoundStatus.OPEN:
            acted += 1
    idle = (
        Job.objects.unscoped()
        .filter(kind__in=[JobKind.FL, JobKind.ANALYTICS], status=JobStatus.RUNNING)
        .exclude(rounds__status__in=[RoundStatus.OPEN, RoundStatus.AGGREGATING])
        .values_list("pk", flat=True)
    )
    grouped = (  # async secure jobs open another group as soon as workers are free
        Job.objects.unscoped()
        .filter(
            kind=JobKind.FL,
            status=JobStatus.RUNNING,
            fl_config__secure_aggregation=True,
            fl_config__mode=FlMode.ASYNC,
            rounds__status=RoundStatus.OPEN,
        )
        .values_list("pk", flat=True)
        .distinct()
    )
    for job_id in [*idle, *grouped]:
        if round_open(job=Job.objects.unscoped().get(pk=job_id)):
            acted += 1
    return acted
