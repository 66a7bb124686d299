"""FL rounds: open a round (select and invite a cohort) and close it exactly once (aggregate,
version, meter, open the next).

A round is open while it collects updates; the fold of each update happens in Celery
(``fl_rounds_uploads.update_fold``) under the round's row lock, and the last fold that meets the
close condition calls ``round_close`` in the same transaction. The sweeper (``fl_rounds_sweep``)
closes or fails rounds past their deadline and opens rounds for running jobs that have none (no
eligible worker was online when the last one closed). Invites are built and sent by
``fl_rounds_invites``; a round's bytes live where ``fl_rounds_storage`` says. In buffered-async
mode a round is one buffer of K updates; with secure aggregation it is one secure group of K,
and several run at once (``fl_secagg_groups``).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import fields
from datetime import timedelta
from typing import Any

import numpy as np
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from jobs import realtime
from jobs.aggregation import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi
from jobs.federated.fedbuff import buffer_mean
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import (
    CLOSE_TIME_STRATEGIES,
    Compression,
    FlConfig,
    FlMode,
    Participation,
    ParticipationStatus,
    Round,
    RoundStatus,
    ServerStrategy,
)
from jobs.metering import metering
from jobs.models import Job, JobStatus
from jobs.services.fl_admission import fl_cohort_invited, fl_job_admit
from jobs.services.fl_evaluation import evaluation_available
from jobs.services.fl_privacy import fl_privacy_admit, fl_privacy_record
from jobs.services.fl_rounds_cohort import (
    RoundInvitation,
    anonymous_count,
    data_shards,
    eligible_workers,
    update_total_bytes,
)
from jobs.services.fl_rounds_dp import round_clip_norm, round_release
from jobs.services.fl_rounds_dp_distributed import clients_noised
from jobs.services.fl_rounds_invites import participation_invite
from jobs.services.fl_rounds_scaffold import scaffold_invite_controls
from jobs.services.fl_rounds_storage import (
    fold_load,
    round_storage_release,
    round_uploads_abandon,
    storage_put,
    strategy_state_key,
    strategy_state_read,
)
from jobs.services.fl_secagg_groups import (
    group_candidates,
    group_may_open,
    group_size,
    group_step,
    groups_in_flight,
    secure_groups,
)
from jobs.services.lifecycle import job_event, job_pause_system
from jobs.services.model_registry import model_version_create, model_version_read
from tenants.tiers import JobKind

# A job fails once this many of its rounds failed (a round with invitations that ended at its
# deadline below the minimum of reports); a round with nobody to invite is never opened.
MAX_FAILED_ROUNDS = 3

# Server steps on the streaming fold's mean; the robust rules (a spill of every update), q-FFL
# (each client's loss) and SCAFFOLD (two means, control variates) run at close instead
# (``fl_rounds_aggregate``).
_STRATEGIES: dict[str, Any] = {
    ServerStrategy.FEDAVG: FedAvg,
    ServerStrategy.FEDAVGM: FedAvgM,
    ServerStrategy.FEDADAM: FedAdam,
    ServerStrategy.FEDYOGI: FedYogi,
    ServerStrategy.FEDADAGRAD: FedAdagrad,
}


def latest_version(*, job: Job) -> ModelVersion:
    """The job's newest global model."""
    return ModelVersion.objects.for_tenant(job.tenant).filter(job=job).order_by("-version")[0]


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
        _job_finish(job, JobStatus.COMPLETED, " ".join(exc.messages)[:300], timezone.now())
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


def _close_time_strategy(config: FlConfig) -> bool:
    return (
        config.server_strategy in CLOSE_TIME_STRATEGIES or config.compression == Compression.SIGNSGD
    )


def close_condition(*, round: Round, config: FlConfig) -> bool:  # noqa: A002
    """Enough updates are folded for the round to aggregate now."""
    if secure_groups(config):
        # A group's reports are its survivors, written once its unmasked sum is in; the
        # phases already held it to its minimum.
        return round.reports > 0
    needed = config.buffer_size if config.mode == FlMode.ASYNC else config.min_reports
    return round.reports >= min(needed or 1, max(round.cohort_size, 1))


def _strategy(config: FlConfig, job: Job, base: ModelVersion) -> Any:
    options = dict(config.strategy_options or {})
    cls = _STRATEGIES[config.server_strategy]
    known = {f.name for f in fields(cls)}
    strategy = cls(**{name: value for name, value in options.items() if name in known})
    state = strategy_state_read(job=job, base=base)
    if state is not None:
        strategy.load_state(state)
    return strategy


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
        _fail(round_, job, now, reason="job_ended")  # a group outliving its job releases nothing
    elif close_condition(round=round_, config=config):
        if job.kind == JobKind.ANALYTICS:  # the sum of the vectors instead of a model step
            from jobs.services.analytics_rounds import analytics_round_aggregate  # imports this

            analytics_round_aggregate(round_=round_, job=job, now=now)
        else:
            _aggregate(round_, job, config, now)
    elif round_.deadline is not None and now >= round_.deadline:
        _fail(round_, job, now)
    else:
        return round_
    fl_privacy_record(round=round_)  # ε spent so far, in the transaction that decided the round
    if job.status == JobStatus.RUNNING:
        round_open(job=job)
    return round_


def _mark_dropouts(round_: Round) -> int:
    """Mark the invitees still out dropped; the round's dropouts (with those replaced while it
    was open)."""
    round_.participations.filter(status=ParticipationStatus.INVITED).update(
        status=ParticipationStatus.DROPPED
    )
    return round_.participations.filter(status=ParticipationStatus.DROPPED).count()


def _aggregate(round_: Round, job: Job, config: FlConfig, now: Any) -> None:
    from jobs import tasks  # the task module imports the services

    fold = fold_load(round=round_)
    base = latest_version(job=job)
    weights = model_version_read(model_version=base)
    folded_ids = [int(i) for i in fold.folded_ids]
    included = list(
        Participation.objects.for_tenant(job.tenant)
        .filter(pk__in=folded_ids)
        .select_related("upload")
        .order_by("pk")
    )
    samples = sum(p.samples for p in included)
    dp_metrics: dict[str, Any] = {}
    clip_norm_next = None  # DP's adaptive clipping (the streaming strategies only)
    if _close_time_strategy(config):
        from jobs.services.fl_rounds_aggregate import close_step

        step = close_step(
            job=job,
            round_=round_,
            config=config,
            base=base,
            weights=weights,
            fold=fold,
            included=included,
            state=strategy_state_read(job=job, base=base),
        )
        new_weights, state_bytes = step.weights.astype(np.float32), step.state
    else:
        strategy = _strategy(config, job, base)
        if round_.clip_norm is not None:  # DP: the clipped sum, noised, over the updates
            release = round_release(
                round=round_,
                config=config,
                fold=fold,
                server_noise=not clients_noised(config=config, round=round_),
            )
            mean_delta, dp_metrics = release.mean_delta, release.metrics
            clip_norm_next = release.clip_norm_next
        elif config.mode == FlMode.ASYNC and not config.secure_aggregation:
            # FedBuff's step divides the staleness-discounted sum by the examples (as the core's
            # BufferedAsyncServer does), so a buffer of stale updates takes a shorter step.
            mean_delta = buffer_mean(fold, examples=samples)
        else:
            mean_delta = fold.finish()
        if secure_groups(config):  # one buffer step, discounted by the group's staleness
            mean_delta, group_metrics = group_step(
                round_=round_, job=job, config=config, mean_delta=mean_delta
            )
            dp_metrics = {**dp_metrics, **group_metrics}
        new_weights = strategy.step(weights=weights, mean_delta=mean_delta).astype(np.float32)
        state_bytes = strategy.state_bytes()
    Participation.objects.for_tenant(job.tenant).filter(pk__in=folded_ids).update(included=True)
    dropouts = _mark_dropouts(round_)
    loss = sum(p.loss_sum for p in included) / samples if samples else None
    correct = sum(p.correct for p in included)
    accuracy = correct / samples if samples else None
    model_bytes = 4 * config.parameter_count
    bytes_up = sum(update_total_bytes(config=config) for _ in included)
    bytes_down = (round_.cohort_size + round_.replacements) * model_bytes  # each got the model
    metrics = (
        {
            "train_loss": loss,
            "train_accuracy": accuracy,
            "participants": len(included),
            "invited": round_.cohort_size,
            "dropouts": dropouts,
            "replacements": round_.replacements,
            "samples": samples,
            "base_version": base.version,
            "duration_seconds": round((now - round_.started_at).total_seconds(), 3),
            "client_accuracy_std": _client_accuracy_std(included),
        }
        | round_rejection_metrics(round_=round_)
        | dp_metrics
    )
    if config.mode == FlMode.ASYNC and included:
        metrics["staleness_mean"] = sum(base.version - p.base_version for p in included) / len(
            included
        )
    version = model_version_create(
        job=job, weights=new_weights, version=base.version + 1, round=round_, metrics=metrics
    )
    storage_put(strategy_state_key(job=job, version=version.version), state_bytes)
    round_.status = RoundStatus.CLOSED
    round_.closed_at = now
    round_.dropouts = dropouts
    round_.clip_norm_next = clip_norm_next
    round_.bytes_up = bytes_up
    round_.bytes_down = bytes_down
    round_.metrics = metrics | {"version": version.version}
    round_.save()
    round_storage_release(round_=round_, job=job, folded_ids=folded_ids)
    round_uploads_abandon(round_=round_, job=job, config=config)
    metering().round_completed(
        job=job,
        round_number=round_.number,
        bytes_transferred=bytes_up + bytes_down,
        contributor_ids=sorted({str(p.contributor_id) for p in included}, key=str),
    )
    realtime.broadcast_on_commit(
        realtime.job_group(job.pk),
        {"type": "job.round_closed", "round": round_.number, "metrics": round_.metrics},
    )
    if evaluation_available(job=job):
        # Evaluated on the held-out set in Celery, which then decides the target accuracy.
        version_id = str(version.pk)
        transaction.on_commit(lambda: tasks.model_version_evaluate.delay(version_id))
    closed = Round.objects.for_tenant(job.tenant).filter(job=job, status=RoundStatus.CLOSED)
    if closed.count() >= config.rounds:
        _job_finish(job, JobStatus.COMPLETED, f"{config.rounds} rounds done", now)
    elif (
        not evaluation_available(job=job)
        and config.target_accuracy is not None
        and (accuracy or 0.0) >= config.target_accuracy
    ):
        # No held-out set (contributors' own data): the clients' weighted train accuracy on the
        # version they trained from.
        _job_finish(job, JobStatus.COMPLETED, f"target accuracy {accuracy:.4f} reached", now)


def _client_accuracy_std(included: list[Participation]) -> float | None:
    """The population standard deviation of the included clients' train accuracy (the spread
    the director charts); None below two clients with samples."""
    accuracies = [p.correct / p.samples for p in included if p.samples]
    return float(np.std(accuracies)) if len(accuracies) >= 2 else None


def round_rejection_metrics(*, round_: Round) -> dict[str, Any]:
    """The round's rejected updates: how many, and how many per rejection code."""
    codes = Counter(
        round_.participations.filter(status=ParticipationStatus.REJECTED).values_list(
            "rejection_code", flat=True
        )
    )
    return {"rejected": sum(codes.values()), "rejections": dict(sorted(codes.items()))}


def _fail(round_: Round, job: Job, now: Any, *, reason: str = "deadline") -> None:
    if round_.fold_checkpoint_key:
        round_storage_release(
            round_=round_, job=job, folded_ids=[int(i) for i in fold_load(round=round_).folded_ids]
        )
    round_uploads_abandon(round_=round_, job=job, config=job.fl_config)
    dropouts = _mark_dropouts(round_)
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
        _job_finish(job, JobStatus.FAILED, f"{MAX_FAILED_ROUNDS} rounds failed", now)


def _job_finish(job: Job, status: str, reason: str, now: Any) -> None:
    Job.objects.unscoped().filter(pk=job.pk, status=JobStatus.RUNNING).update(
        status=status, status_reason=reason, completed_at=now
    )
    job.status = status
    job_event(job=job, kind=f"fl.{status}", message=reason)
