"""FL rounds: open a round (select and invite a cohort), close it exactly once (aggregate, version,
meter, open the next), and the deadline sweep that backs both up.

A round is open while it collects updates; the fold of each update happens in Celery
(``fl_rounds_uploads.update_fold``) under the round's row lock, and the last fold that meets the
close condition calls ``round_close`` in the same transaction. The sweeper closes or fails rounds
past their deadline and opens rounds for running jobs that have none (no eligible worker was
online when the last one closed). In buffered-async mode a round is one buffer of K updates.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import fields
from datetime import timedelta
from typing import Any

import numpy as np
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from jobs import realtime
from jobs.aggregation import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi, StreamingFold
from jobs.federated.fedbuff import buffer_mean
from jobs.fl_models import (
    CLOSE_TIME_STRATEGIES,
    FlConfig,
    FlMode,
    ModelVersion,
    Participation,
    ParticipationStatus,
    Round,
    RoundStatus,
    ServerStrategy,
)
from jobs.metering import metering
from jobs.models import Job, JobStatus
from jobs.services.analytics_invite import analytics_invite_payload
from jobs.services.fl_admission import fl_cohort_invited, fl_job_admit
from jobs.services.fl_evaluation import evaluation_available
from jobs.services.fl_privacy import fl_privacy_admit, fl_privacy_record
from jobs.services.fl_rounds_cohort import (
    RoundInvitation,
    anonymous_count,
    data_shards,
    eligible_workers,
    round_invite_payload,
    update_total_bytes,
    update_vectors,
)
from jobs.services.fl_rounds_dp import round_clip_norm, round_release
from jobs.services.fl_rounds_scaffold import scaffold_invite_controls
from jobs.services.lifecycle import job_event, job_pause_system
from jobs.services.model_registry import model_version_create, model_version_read
from tenants.tiers import JobKind

# A job fails once this many of its rounds failed (a round with invitations that ended at its
# deadline below the minimum of reports); a round with nobody to invite is never opened.
MAX_FAILED_ROUNDS = 3
# Invites go to each invitee's channel after commit; the consumer's ``worker_round_invite`` turns
# them into ``round_invite`` messages. Edge workers and browser pages train; one that cannot says
# so (``round_declined``) and is not counted a dropout. Off, invites are only built and returned.
SEND_INVITES = True
# A completed upload not folded after this long lost its Celery task: the sweeper re-queues it.
FOLD_GRACE_SECONDS = 30

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


def fold_checkpoint_key(*, round: Round, count: int) -> str:  # noqa: A002 - the model's name
    """Where the round's fold is checkpointed after ``count`` folds (a new key per fold)."""
    return f"fl-rounds/{round.tenant_id}/{round.job_id}/{round.number}/fold-{count:06d}.ckpt"


def strategy_state_key(*, job: Job, version: int) -> str:
    """Where the server strategy's state after producing ``version`` lives."""
    return f"fl-rounds/{job.tenant_id}/{job.pk}/strategy-{version:06d}.npz"


def storage_put(key: str, data: bytes) -> None:
    """Write ``data`` under exactly ``key``, replacing what a killed earlier attempt left there."""
    from django.core.files.base import ContentFile

    if default_storage.exists(key):
        default_storage.delete(key)
    saved = default_storage.save(key, ContentFile(data))
    if saved != key:
        default_storage.delete(saved)
        raise RuntimeError(f"storage refused the key {key}")


def chunk_key(*, upload: Any, index: int, sha256: str) -> str:
    """Storage key of one accepted chunk of an update upload."""
    return f"fl-uploads/{upload.tenant_id}/{upload.pk}/{index:06d}-{sha256}.part"


def upload_chunk_keys(upload: Any) -> list[str]:
    """Every stored chunk of an upload."""
    return [
        chunk_key(upload=upload, index=int(index), sha256=digest)
        for index, digest in upload.chunks.items()
    ]


def storage_delete_on_commit(keys: list[str]) -> None:
    """Delete storage objects once the transaction that stopped needing them commits."""

    def delete() -> None:
        for key in keys:
            default_storage.delete(key)

    if keys:
        transaction.on_commit(delete)


def _release_round_storage(round_: Round, job: Job, folded_ids: list[int]) -> None:
    # Once a round is closed or failed its updates and fold are no longer needed: the version
    # (or the failure) is committed. Retention of update bytes is until the round ends.
    from jobs.fl_models import UpdateUpload

    uploads = UpdateUpload.objects.for_tenant(job.tenant).filter(participation_id__in=folded_ids)
    keys = [key for upload in uploads for key in upload_chunk_keys(upload)]
    if round_.fold_checkpoint_key:
        keys.append(round_.fold_checkpoint_key)
    storage_delete_on_commit(keys)


def _abandon_receiving(round_: Round, job: Job, config: FlConfig) -> None:
    # A sync round that ended takes no more updates: uploads still receiving are refused and
    # their chunks go (in async mode they may still join a later buffer).
    from jobs.fl_models import UpdateUpload, UploadStatus

    if config.mode == FlMode.ASYNC:
        return
    receiving = UpdateUpload.objects.for_tenant(job.tenant).filter(
        participation__round=round_, status=UploadStatus.RECEIVING
    )
    storage_delete_on_commit([key for upload in receiving for key in upload_chunk_keys(upload)])
    receiving.update(
        status=UploadStatus.REJECTED,
        rejection_code="round_closed",
        rejection_message="the round ended before this upload completed",
    )


def fold_load(*, round: Round) -> StreamingFold:  # noqa: A002
    """The round's fold as of its last committed checkpoint (empty if nothing was folded)."""
    if not round.fold_checkpoint_key:
        config = round.job.fl_config
        return StreamingFold(config.parameter_count * update_vectors(config=config))
    with default_storage.open(round.fold_checkpoint_key, "rb") as handle:
        return StreamingFold.restore(handle.read())


def latest_version(*, job: Job) -> ModelVersion:
    """The job's newest global model."""
    return ModelVersion.objects.for_tenant(job.tenant).filter(job=job).order_by("-version")[0]


@transaction.atomic
def round_open(*, job: Job) -> list[RoundInvitation]:
    """Open the job's next round: select the cohort, write the round and its participations,
    and send each invitee ``worker.round_invite`` after commit; returns the invitations.

    Locks the job row. Does nothing (returns []) if the job is not running, a round is open,
    or no worker is eligible (the sweeper retries).
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
    if rounds.filter(status__in=[RoundStatus.OPEN, RoundStatus.AGGREGATING]).exists():
        return []
    number = (rounds.order_by("-number").values_list("number", flat=True).first() or 0) + 1
    rng = random.Random(f"{job.seed}:{number}")  # noqa: S311 - a reproducible draw, not a secret
    eligible = eligible_workers(job=job, config=config, rng=rng)
    if not eligible:
        return []
    try:  # a spent privacy budget ends the job: no top-up can buy more ε
        fl_privacy_admit(job=job, round_number=number)
    except ValidationError as exc:
        _job_finish(job, JobStatus.COMPLETED, " ".join(exc.messages)[:300], timezone.now())
        return []
    try:  # every round is admitted by the money plane, not only the first
        fl_job_admit(job=job)
    except ValidationError as exc:
        reason = " ".join(exc.messages)
        transaction.on_commit(lambda: job_pause_system(job_id=job.pk, reason=reason))
        return []
    cohort = rng.sample(eligible, min(len(eligible), fl_cohort_invited(config=config)))
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
        job=job, base=base, read_state=lambda: _strategy_state(job, base)
    )
    invitations = []
    for worker, shard in zip(cohort, shards, strict=True):
        participation = Participation.objects.create(
            tenant_id=job.tenant_id,
            round=round_,
            worker=worker,
            contributor_id=worker.contributor_id,
            base_version=0 if base is None else base.version,
        )
        if base is None:
            payload = analytics_invite_payload(
                job=job, round=round_, participation=participation, shard=shard
            )
        else:
            payload = round_invite_payload(
                job=job,
                round=round_,
                participation=participation,
                version=base,
                shard=shard,
                controls=invite_controls(shard),
            )
        participation.invite = payload
        participation.save(update_fields=["invite"])
        if SEND_INVITES:
            realtime.send_on_commit(worker.channel_name, payload)
        invitations.append(
            RoundInvitation(str(worker.pk), worker.channel_name, participation.pk, payload)
        )
    if config.secure_aggregation and config.mode == FlMode.SYNC:
        from jobs.services.fl_secagg import secagg_round_open  # its abort path imports this

        secagg_round_open(round=round_, config=config, invitations=invitations)
    return invitations


def _close_time_strategy(config: FlConfig) -> bool:
    return config.server_strategy in CLOSE_TIME_STRATEGIES


def _strategy_state(job: Job, base: ModelVersion) -> bytes | None:
    key = strategy_state_key(job=job, version=base.version)
    if not default_storage.exists(key):
        return None
    with default_storage.open(key, "rb") as handle:
        return handle.read()


def close_condition(*, round: Round, config: FlConfig) -> bool:  # noqa: A002
    """Enough updates are folded for the round to aggregate now."""
    needed = config.buffer_size if config.mode == FlMode.ASYNC else config.min_reports
    return round.reports >= min(needed or 1, max(round.cohort_size, 1))


def _strategy(config: FlConfig, job: Job, base: ModelVersion) -> Any:
    options = dict(config.strategy_options or {})
    cls = _STRATEGIES[config.server_strategy]
    known = {f.name for f in fields(cls)}
    strategy = cls(**{name: value for name, value in options.items() if name in known})
    state = _strategy_state(job, base)
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
    if close_condition(round=round_, config=config):
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
    return round_.participations.filter(status=ParticipationStatus.INVITED).update(
        status=ParticipationStatus.DROPPED
    )


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
            state=_strategy_state(job, base),
        )
        new_weights, state_bytes = step.weights.astype(np.float32), step.state
    else:
        strategy = _strategy(config, job, base)
        if round_.clip_norm is not None:  # DP: the clipped sum, noised, over the updates
            release = round_release(round=round_, config=config, fold=fold)
            mean_delta, dp_metrics = release.mean_delta, release.metrics
            clip_norm_next = release.clip_norm_next
        elif config.mode == FlMode.ASYNC:
            # FedBuff's step divides the staleness-discounted sum by the examples (as the core's
            # BufferedAsyncServer does), so a buffer of stale updates takes a shorter step.
            mean_delta = buffer_mean(fold, examples=samples)
        else:
            mean_delta = fold.finish()
        new_weights = strategy.step(weights=weights, mean_delta=mean_delta).astype(np.float32)
        state_bytes = strategy.state_bytes()
    Participation.objects.for_tenant(job.tenant).filter(pk__in=folded_ids).update(included=True)
    dropouts = _mark_dropouts(round_)
    loss = sum(p.loss_sum for p in included) / samples if samples else None
    correct = sum(p.correct for p in included)
    accuracy = correct / samples if samples else None
    model_bytes = 4 * config.parameter_count
    bytes_up = sum(update_total_bytes(config=config) for _ in included)
    bytes_down = round_.cohort_size * model_bytes
    metrics = (
        {
            "train_loss": loss,
            "train_accuracy": accuracy,
            "participants": len(included),
            "invited": round_.cohort_size,
            "dropouts": dropouts,
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
    _release_round_storage(round_, job, folded_ids)
    _abandon_receiving(round_, job, config)
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
        _release_round_storage(round_, job, [int(i) for i in fold_load(round=round_).folded_ids])
    _abandon_receiving(round_, job, job.fl_config)
    dropouts = _mark_dropouts(round_)
    round_.status = RoundStatus.FAILED
    round_.closed_at = now
    round_.dropouts = dropouts
    round_.metrics = {
        "reports": round_.reports,
        "dropouts": dropouts,
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


def round_sweep(*, now: Any = None) -> int:
    """Re-queue folds a killed Celery worker lost, close or fail open rounds past their
    deadline, and open a round for running FL jobs with none open (empty cohorts); returns the
    rounds and uploads acted on."""
    from jobs import tasks  # the task module imports the services
    from jobs.fl_models import UpdateUpload, UploadStatus

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
    for job_id in idle:
        if round_open(job=Job.objects.unscoped().get(pk=job_id)):
            acted += 1
    return acted


def fl_invites_pending_unscoped(*, worker_id: Any) -> list[dict[str, Any]]:
    """The invites of open rounds this worker was invited to and has not reported in, as sent
    (the consumer re-sends them: an invite sent from another process or lost on the way would
    otherwise leave the invitee idle until the round's deadline). An invite whose update was
    uploaded whole is not pending: its fold may still be queued (a Celery worker down), and a
    worker reconnecting meanwhile would train the round again for nothing."""
    key = uuid.UUID(str(worker_id))
    return fl_invites_pending_by_worker_unscoped(worker_ids=[key]).get(key, [])


def fl_invites_pending_by_worker_unscoped(
    *, worker_ids: list[Any]
) -> dict[Any, list[dict[str, Any]]]:
    """:func:`fl_invites_pending_unscoped` for many workers in one query (a batch of hellos, a
    process's idle re-check): worker id to its pending invites; workers with none are absent."""
    from jobs.fl_models import UploadStatus

    if not worker_ids:
        return {}
    pending: dict[Any, list[dict[str, Any]]] = {}
    rows = (
        Participation.objects.unscoped()
        .filter(
            worker_id__in=worker_ids,
            status=ParticipationStatus.INVITED,
            round__status=RoundStatus.OPEN,
            round__deadline__gt=timezone.now(),
        )
        .exclude(invite={})
        .exclude(
            upload__status__in=[
                UploadStatus.COMPLETE,
                UploadStatus.FOLDED,
                UploadStatus.REJECTED,
            ]
        )
        .order_by("pk")
        .values_list("worker_id", "invite")
    )
    for worker_id, invite in rows:
        pending.setdefault(worker_id, []).append(invite)
    return pending
