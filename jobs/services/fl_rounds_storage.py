"""Where a round's bytes live and when they go: the fold's checkpoints, the server strategy's
state, the chunks of update uploads, and their release once a round has ended.

Every key is derived from ids, so a retried write lands on the same key (``storage_put``
replaces what a killed attempt left) and deletion happens only after the commit that stopped
needing the bytes.
"""

from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage
from django.db import transaction

from jobs.aggregation import SignVote, StreamingFold
from jobs.fl_artifact_models import ModelVersion, UpdateUpload, UploadStatus
from jobs.fl_models import FlConfig, FlMode, Round
from jobs.models import Job
from jobs.services.fl_rounds_cohort import update_vectors
from jobs.services.fl_rounds_compression import empty_fold, fold_restore


def fold_checkpoint_key(*, round: Round, count: int) -> str:  # noqa: A002 - the model's name
    """Where the round's fold is checkpointed after ``count`` folds (a new key per fold)."""
    return f"fl-rounds/{round.tenant_id}/{round.job_id}/{round.number}/fold-{count:06d}.ckpt"


def strategy_state_key(*, job: Job, version: int) -> str:
    """Where the server strategy's state after producing ``version`` lives."""
    return f"fl-rounds/{job.tenant_id}/{job.pk}/strategy-{version:06d}.npz"


def strategy_state_read(*, job: Job, base: ModelVersion) -> bytes | None:
    """The server strategy's state as it was when ``base`` was produced (None: no state yet)."""
    key = strategy_state_key(job=job, version=base.version)
    if not default_storage.exists(key):
        return None
    with default_storage.open(key, "rb") as handle:
        return handle.read()


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


def round_storage_release(*, round_: Round, job: Job, folded_ids: list[int]) -> None:
    """Delete the folded updates' chunks and the round's fold checkpoint after commit.

    Once a round is closed or failed its updates and fold are no longer needed: the version (or
    the failure) is committed. Retention of update bytes is until the round ends."""
    uploads = UpdateUpload.objects.for_tenant(job.tenant).filter(participation_id__in=folded_ids)
    keys = [key for upload in uploads for key in upload_chunk_keys(upload)]
    if round_.fold_checkpoint_key:
        keys.append(round_.fold_checkpoint_key)
    storage_delete_on_commit(keys)


def round_uploads_abandon(*, round_: Round, job: Job, config: FlConfig) -> None:
    """Refuse the uploads of an ended sync round still receiving, and delete their chunks after
    commit (in async mode they may still join a later buffer: left alone)."""
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


def fold_load(*, round: Round) -> StreamingFold | SignVote:  # noqa: A002
    """The round's fold as of its last committed checkpoint (empty if nothing was folded)."""
    config = round.job.fl_config
    if not round.fold_checkpoint_key:  # signSGD's is a vote (fl_rounds_compression)
        return empty_fold(config, config.parameter_count * update_vectors(config=config))
    with default_storage.open(round.fold_checkpoint_key, "rb") as handle:
        return fold_restore(config, handle.read())
