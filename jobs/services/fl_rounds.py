"""FL rounds: open a round (select and invite a cohort) and close it exactly once (aggregate,
version, meter, open the next).

A round is open while it collects updates; the fold of each update happens in Celery
(``fl_rounds_uploads.update_fold``) under the round's row lock, and the last fold that meets the
close condition calls ``round_close`` in the same transaction. The sweeper (``fl_rounds_sweep``)
closes or fails rounds past their deadline and opens rounds for running jobs that have none (no
eligible worker was online when the last one closed). Invites are built and sent by
``fl_rounds_invites``; a round's bytes live where ``fl_rounds_storage`` says. A round that closes
makes its new model version in ``fl_rounds_version``; one that fails, and the job's end, are
``fl_rounds_end``. In buffered-async
mode a round is one buffer of K updates; with secure aggregation it is one secure group of K,
and several run at once (``fl_secagg_groups``).
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from jobs.fl_models import FlConfig, FlMode, Round, RoundStatus
from jobs.models import Job, JobStatus
from jobs.services.fl_admission import fl_cohort_invited, fl_job_admit
from jobs.services.fl_privacy import fl_privacy_admit, fl_privacy_record
from jobs.services.fl_rounds_cohort import (
    RoundInvitation,
    anonymous_count,
    data_shards,
    eligible_workers,
)
from jobs.services.fl_rounds_dp import round_clip_norm
from jobs.services.fl_rounds_end import fl_job_finish, round_fail
from jobs.services.fl_rounds_invites import participation_invite
from jobs.services.fl_rounds_scaffold import scaffold_invite_controls
from jobs.services.fl_rounds_storage import strategy_state_read
from jobs.services.fl_rounds_version import round_aggregate
from jobs.services.fl_secagg_groups import (
    group_candidates,
    group_may_open,
    group_size,
    groups_in_flight,
    secure_groups,
)
from jobs.services.lifecycle import job_pause_system
from jobs.services.model_registry import latest_version
from tenants.tiers import JobKind


@transaction.atomic
def round_open(*, job: Job) -> list[RoundInvitation]:
    """Open the job's next round: select the cohort, write the round and its participations,
    and send each invitee ``worker.round_invite`` after commit; returns the invitations.

    Locks the job row. Does nothing (returns []) if the job is not running, a round is open,
    or no worker is eligible (the sweeper retries). An async job with secure aggregation opens
    secure groups instead: as many as fit (``fl_secagg_groups``), each of workers not in
    another open group.
    """
    job = (
        Job.objects.unscoped()
        .select_for_update(of=("self",))
        .select_related("fl_config")
        .get(pk=job.pk)
    )
    config = job.fl_config
    if job.status != JobStatus.RUNNING or config is None:
        return []
    rounds = Round.objects.for_tenant(job.tenant).filter(job=job)
    groups = secure_groups(config)
    if groups:
        if not group_may_open(job=job, config=config):
            return []
    elif rounds.filter(status__in=[RoundStatus.OPEN, RoundStatus.AGGREGATING]).exists():
        return []
    number = (rounds.order_by("-number").values_list("number", flat=True).first() or 0) + 1
    rng = random.Random(f"{job.seed}:{number}")  # noqa: S311 - a reproducible draw, not a secret
    eligible = eligible_workers(job=job, config=config, rng=rng)
    if groups:
        eligible = group_candidates(job=job, config=config, eligible=eligible)
    if not eligible:
        return []
    try:  # a spent privacy budget ends the job: no top-up can buy more ε
        fl_privacy_admit(job=job, round_number=number)
    except ValidationError as exc:
        if groups and groups_in_flight(job=job).exists():
            return []  # the budget holds the groups in flight: the job ends after the last
        fl_job_finish(job, JobStatus.COMPLETED, " ".join(exc.messages)[:300], timezone.now())
        return []
    try:  # every round is admitted by the money plane, not only the first
        fl_job_admit(job=job)
    except ValidationError as exc:
        reason = " ".join(exc.messages)
        transaction.on_commit(lambda: job_pause_system(job_id=job.pk, reason=reason))
        return []
    invited = group_size(config) if groups else fl_cohort_invited(config=config)
    cohort = rng.sample(eligible, min(len(eligible), invited))
    analytics = job.kind == JobKind.ANALYTICS  # no model: its invite carries the query
    base = None if analytics else latest_version(job=job)
    now = timezone.now()
    round_ = Round.objects.create(
        tenant_id=job.tenant_id,
        job=job,
        number=number,
        deadline=now + timedelta(seconds=config.round_deadline_seconds),
        cohort_size=len(cohort),
        clip_norm=round_clip_norm(job=job, config=config),
        anonymous_invited=anonymous_count(cohort, job=job),
    )
    shards = data_shards(config, len(cohort), rng)
    invite_controls = scaffold_invite_controls(
        job=job, base=base, read_state=lambda: strategy_state_read(job=job, base=base)
    )
    invitations = [
        participation_invite(
            job=job,
            round_=round_,
            worker=worker,
            base=base,
            shard=shard,
            controls=None if base is None else invite_controls(shard),
        )
        for worker, shard in zip(cohort, shards, strict=True)
    ]
    if config.secure_aggregation:
        from jobs.services.fl_secagg import secagg_round_open  # its abort path imports this

        secagg_round_open(round=round_, config=config, invitations=invitations)
    if groups:  # the next group, while free workers and rounds to go remain
        invitations += round_open(job=job)
    return invitations


def close_condition(*, round: Round, config: FlConfig) -> bool:  # noqa: A002
    """Enough updates are folded for the round to aggregate now."""
    if secure_groups(config):
        # A group's reports are its survivors, written once its unmasked sum is in; the
        # phases already held it to its minimum.
        return round.reports > 0
    needed = config.buffer_size if config.mode == FlMode.ASYNC else config.min_reports
    return round.reports >= min(needed or 1, max(round.cohort_size, 1))


@transaction.atomic
def round_close(*, round_id: int, now: Any = None) -> Round:
    """Close a round exactly once, under its row lock: aggregate it if enough updates were
    folded, fail it if its deadline passed below the minimum, otherwise leave it open.

    On success: the fold's mean goes through the server strategy into a new model version, the
    round's metrics are written, the round is charged once through the metering port (crediting
    only the contributors whose updates were folded), invitees that never reported become
    dropouts, and the next round opens (or the job completes). A failed round opens the next
    one too, until ``MAX_FAILED_ROUNDS`` have failed: then the job fails.
    """
    round_ = Round.objects.unscoped().select_for_update().get(pk=round_id)
    if round_.status != RoundStatus.OPEN:
        return round_
    job = Job.objects.unscoped().select_related("fl_config", "tenant").get(pk=round_.job_id)
    config = job.fl_config
    now = now or timezone.now()
    if secure_groups(config):  # groups close concurrently: one new version at a time
        Job.objects.unscoped().select_for_update(of=("self",)).filter(pk=job.pk).first()
    if secure_groups(config) and job.status != JobStatus.RUNNING:
        # a group outliving its job releases nothing
        round_fail(round_, job, now, reason="job_ended")
    elif close_condition(round=round_, config=config):
        if job.kind == JobKind.ANALYTICS:  # the sum of the vectors instead of a model step
            from jobs.services.analytics_rounds import analytics_round_aggregate  # imports this

            analytics_round_aggregate(round_=round_, job=job, now=now)
        else:
            round_aggregate(round_, job, config, now)
    elif round_.deadline is not None and now >= round_.deadline:
        round_fail(round_, job, now)
    else:
        return round_
    fl_privacy_record(round=round_)  # ε spent so far, in the transaction that decided the round
    if job.status == JobStatus.RUNNING:
        round_open(job=job)
    return round_
