"""The fold of FL updates, run by Celery: one task per completed upload folds it into its
round's streaming fold under the round's row lock, checkpoints the fold to storage, and closes
the round when that was the update it waited for. Tasks carry the upload id, never tensors."""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from jobs.aggregation import UpdateRejected, fold_weight
from jobs.fl_artifact_models import UpdateUpload, UploadStatus
from jobs.fl_models import (
    FlMode,
    Participation,
    ParticipationStatus,
    Round,
    RoundStatus,
    ServerStrategy,
    StalenessWeighting,
)
from jobs.services.fl_rounds import close_condition, round_close
from jobs.services.fl_rounds_compression import update_fold_into
from jobs.services.fl_rounds_dp import dp_fold_record, dp_fold_terms
from jobs.services.fl_rounds_storage import fold_checkpoint_key, fold_load, storage_put
from jobs.services.fl_rounds_uploads import (
    participation_mark_late,
    update_chunks,
    upload_reject,
    upload_set_status,
)
from jobs.services.model_registry import latest_version
from tenants.tiers import JobKind


def _target_round(participation: Participation) -> Round | None:
    """The round an update folds into: its own if open; in async mode the job's open round
    (a late update joins the next buffer, discounted by staleness); otherwise none (late)."""
    own = participation.round
    if own.status == RoundStatus.OPEN:
        return own
    if own.job.fl_config.mode != FlMode.ASYNC:
        return None
    return (
        Round.objects.for_tenant(own.job.tenant)
        .filter(job=own.job, status=RoundStatus.OPEN)
        .first()
    )


@transaction.atomic
def update_fold(*, upload_id: str) -> UploadStatus:
    """Fold a completed upload into its round under the round's row lock, checkpoint the fold
    to storage, and close the round if that was the update it waited for.

    Idempotent per participation (the fold keeps its folded ids): a retried or duplicated task
    is a no-op. A crash before the commit leaves the round pointing to the previous checkpoint,
    and the retry redoes the fold.
    """
    # The upload row's lock serialises duplicate tasks of one update (a sweeper's re-queue next
    # to a slow original): the second finds it folded. Lock order: upload, then round.
    upload = (
        UpdateUpload.objects.unscoped()
        .select_for_update(of=("self",))
        .select_related("participation__round__job__fl_config", "participation__round__job__tenant")
        .get(pk=upload_id)
    )
    if upload.status != UploadStatus.COMPLETE:
        return UploadStatus(upload.status)
    participation = upload.participation
    if participation.round.job.fl_config.secure_aggregation:  # masked: a modular sum instead
        from jobs.services.fl_secagg_fold import secagg_update_fold

        return secagg_update_fold(upload=upload)
    round_ = None
    for _ in range(2):  # an async round may close (and the next open) while we wait the lock
        target = _target_round(participation)
        if target is None:
            break
        round_ = (
            Round.objects.unscoped()
            .select_for_update(of=("self",))
            .select_related("job")
            .get(pk=target.pk)
        )
        if round_.status == RoundStatus.OPEN:
            break
        participation.round.refresh_from_db()
        round_ = None
    if round_ is None:
        participation_mark_late(participation)
        return upload_set_status(upload, UploadStatus.REJECTED, "late", "the round closed")
    config = round_.job.fl_config
    # The declared sample count (capped at completion by the client's shard) is the fold weight;
    # SCAFFOLD averages its two vectors with equal weights (Karimireddy et al., Algorithm 1); an
    # analytics vector is already a sum over its rows, so rounds of that kind add them as they
    # are (weight 1) and the fold's weighted sum is the plain sum (docs/analytics.md).
    analytics = round_.job.kind == JobKind.ANALYTICS
    equal = analytics or config.server_strategy == ServerStrategy.SCAFFOLD
    weight = 1.0 if equal else float(participation.samples)
    latest = None if analytics else latest_version(job=round_.job)  # analytics has no model
    staleness = 0 if latest is None else max(0, latest.version - upload.base_version)
    if config.mode == FlMode.ASYNC:
        if staleness > (config.staleness_bound or 0):
            participation_mark_late(participation)
            Participation.objects.unscoped().filter(pk=participation.pk).update(staleness=staleness)
            return upload_set_status(
                upload, UploadStatus.REJECTED, "stale", f"staleness {staleness}"
            )
        exponent = (
            0.0
            if config.staleness_weighting == StalenessWeighting.CONSTANT
            else (config.staleness_exponent or 0.5)
        )
        weight = fold_weight(
            participation.samples, staleness=staleness, staleness_exponent=exponent
        )
    weight, clip_norm = dp_fold_terms(round=round_, participation=participation, weight=weight)
    fold = fold_load(round=round_)
    try:
        folded = update_fold_into(
            fold,
            config=config,
            update_id=str(participation.pk),
            open_chunks=lambda: update_chunks(upload=upload),
            weight=weight,
            clip_norm=clip_norm,
        )
    except UpdateRejected as exc:
        upload_reject(upload, str(exc.code), exc.message)
        return UploadStatus.REJECTED
    if folded:
        key = fold_checkpoint_key(round=round_, count=fold.count)
        storage_put(key, fold.checkpoint())
        previous = round_.fold_checkpoint_key
        round_.fold_checkpoint_key = key
        round_.reports = fold.count
        dp_fold_record(round=round_, fold=fold)
        round_.save(update_fields=["fold_checkpoint_key", "reports", "clip_within"])
        if previous:
            transaction.on_commit(lambda: default_storage.delete(previous))
    Participation.objects.unscoped().filter(pk=participation.pk).update(
        status=ParticipationStatus.REPORTED,
        reported_at=timezone.now(),
        update_key=f"fl-uploads/{upload.tenant_id}/{upload.pk}/",
        folded_round=round_,
        staleness=staleness,
        fold_weight=weight,
    )
    upload_set_status(upload, UploadStatus.FOLDED)
    if close_condition(round=round_, config=config):
        round_close(round_id=round_.pk)
    return UploadStatus.FOLDED
