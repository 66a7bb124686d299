"""How an FL round ends without a new model version, and how an FL job ends.

A round fails (its deadline passed below the minimum of reports, its secure group's job ended,
or its job completed under it): its bytes are released, invitees still out become dropouts, and
after ``MAX_FAILED_ROUNDS`` failed rounds the job fails. ``fl_job_finish`` is the one way an FL
or analytics job completes or fails; ``round_close`` (``fl_rounds``) decides which way a round
goes, under its row lock.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from jobs import realtime
from jobs.fl_models import FlConfig, Participation, ParticipationStatus, Round, RoundStatus
from jobs.metering import metering
from jobs.models import Job, JobStatus
from jobs.services.fl_rounds_storage import fold_load, round_storage_release, round_uploads_abandon
from jobs.services.lifecycle import job_event

# A job fails once this many of its rounds failed (a round with invitations that ended at its
# deadline below the minimum of reports); a round with nobody to invite is never opened.
MAX_FAILED_ROUNDS = 3


def round_dropouts_mark(round_: Round) -> int:
    """Mark the invitees still out dropped; the round's dropouts (with those replaced while it
    was open)."""
    round_.participations.filter(status=ParticipationStatus.INVITED).update(
        status=ParticipationStatus.DROPPED
    )
    return round_.participations.filter(status=ParticipationStatus.DROPPED).count()


def round_rejection_metrics(*, round_: Round) -> dict[str, Any]:
    """The round's rejected updates: how many, and how many per rejection code."""
    codes = Counter(
        round_.participations.filter(status=ParticipationStatus.REJECTED).values_list(
            "rejection_code", flat=True
        )
    )
    return {"rejected": sum(codes.values()), "rejections": dict(sorted(codes.items()))}


def round_fail(round_: Round, job: Job, now: Any, *, reason: str = "deadline") -> None:
    """Fail a round: release its bytes, mark its dropouts, and fail the job at the limit."""
    if round_.fold_checkpoint_key:
        round_storage_release(
            round_=round_, job=job, folded_ids=[int(i) for i in fold_load(round=round_).folded_ids]
        )
    round_uploads_abandon(round_=round_, job=job, config=job.fl_config)
    dropouts = round_dropouts_mark(round_)
    round_.status = RoundStatus.FAILED
    round_.closed_at = now
    round_.dropouts = dropouts
    round_.metrics = {
        "reports": round_.reports,
        "dropouts": dropouts,
        "replacements": round_.replacements,
        "reason": reason,
    } | round_rejection_metrics(round_=round_)
    round_.save()
    failed = Round.objects.for_tenant(job.tenant).filter(job=job, status=RoundStatus.FAILED)
    if job.status == JobStatus.RUNNING and failed.count() >= MAX_FAILED_ROUNDS:
        fl_job_finish(job, JobStatus.FAILED, f"{MAX_FAILED_ROUNDS} rounds failed", now)


def fl_job_finish(job: Job, status: str, reason: str, now: Any) -> None:
    """End a running FL job with ``status`` and its reason, and record the event."""
    Job.objects.unscoped().filter(pk=job.pk, status=JobStatus.RUNNING).update(
        status=status, status_reason=reason, completed_at=now
    )
    job.status = status
    job_event(job=job, kind=f"fl.{status}", message=reason)


def round_closed_save(
    *,
    round_: Round,
    job: Job,
    config: FlConfig,
    folded_ids: list[Any],
    included: list[Participation],
    bytes_transferred: int,
) -> None:
    """Save a round closed in memory and do what every close does after it (an FL round's and
    an analytics round's alike): release the folded uploads' storage, abandon the rest, meter
    the round once with its contributors, and tell the job's viewers after commit."""
    round_.save()
    round_storage_release(round_=round_, job=job, folded_ids=folded_ids)
    round_uploads_abandon(round_=round_, job=job, config=config)
    metering().round_completed(
        job=job,
        round_number=round_.number,
        bytes_transferred=bytes_transferred,
        contributor_ids=sorted({str(p.contributor_id) for p in included}, key=str),
    )
    realtime.broadcast_on_commit(
        realtime.job_group(job.pk),
        {"type": "job.round_closed", "round": round_.number, "metrics": round_.metrics},
    )
