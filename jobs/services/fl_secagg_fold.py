"""The fold of masked inputs: a modular u32 sum, streaming and checkpointed.

A secure round's upload body is the usual 32-byte metrics header followed by the masked input
u32[d] little-endian (the same length as f32[d]: the upload path is unchanged). Each completed
upload is added chunk by chunk into the round's running sum in Z_2^32 under the round's row lock;
the sum (raw u32[d] LE) is checkpointed to storage under a new key per fold, and the masked
inputs themselves are deleted when the round ends. Nothing here ever sees an unmasked input.
"""

from __future__ import annotations

import numpy as np
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from jobs.fl_artifact_models import UpdateUpload, UploadStatus
from jobs.fl_models import Participation, ParticipationStatus, Round, RoundStatus
from jobs.models import Job
from jobs.secagg_models import SecAggMessage, SecAggPhase, SecAggRound
from jobs.services.fl_rounds_storage import (
    storage_delete_on_commit,
    storage_put,
    upload_chunk_keys,
)
from jobs.services.fl_rounds_uploads import update_chunks, upload_set_status
from jobs.services.fl_secagg_phases import phase_close_locked
from jobs.services.fl_secagg_state import phase_members


def masked_sum_key(*, secagg: SecAggRound, count: int) -> str:
    """Where the running masked sum lives after ``count`` folds (a new key per fold)."""
    round_ = secagg.round
    return f"fl-rounds/{round_.tenant_id}/{round_.job_id}/{round_.number}/masked-{count:06d}.u32"


def masked_sum_load(*, secagg: SecAggRound, dimension: int) -> np.ndarray:
    """The running sum u32[d] (zeros before the first fold)."""
    if not secagg.masked_sum_key:
        return np.zeros(dimension, dtype=np.uint32)
    with default_storage.open(secagg.masked_sum_key, "rb") as handle:
        return np.frombuffer(handle.read(), dtype="<u4").astype(np.uint32)


def masked_sum_range(*, secagg: SecAggRound, start: int, stop: int) -> np.ndarray:
    """Coordinates [start, stop) of the masked sum, read without loading the rest."""
    with default_storage.open(secagg.masked_sum_key, "rb") as handle:
        handle.seek(4 * start)
        return np.frombuffer(handle.read(4 * (stop - start)), dtype="<u4").astype(np.uint32)


def _add_chunks(total: np.ndarray, upload: UpdateUpload) -> int:
    offset = 0
    for chunk in update_chunks(upload=upload):
        words = np.frombuffer(chunk, dtype="<u4")
        if offset + words.size > total.size:
            return -1
        piece = total[offset : offset + words.size]
        np.add(piece, words, out=piece)  # wraps modulo 2^32, as the masks need
        offset += words.size
    return offset


@transaction.atomic
def secagg_update_fold(*, upload: UpdateUpload) -> UploadStatus:
    """Add a completed masked upload into its round's modular sum once, and close the masked
    input phase when every client that shared keys has sent its input.

    The caller holds the upload's row lock; this takes the round's, then the secure round's.
    An upload outside the masked-input phase, or from a client that did not share keys, is
    refused and its participation stays a dropout."""
    participation = upload.participation
    round_ = Round.objects.unscoped().select_for_update().get(pk=participation.round_id)
    secagg = SecAggRound.objects.unscoped().select_for_update().get(round=round_)
    client = next(int(c) for c, pid in secagg.clients.items() if pid == participation.pk)
    if (
        round_.status != RoundStatus.OPEN
        or secagg.phase != SecAggPhase.MASKED_INPUT
        or client not in phase_members(secagg=secagg, phase=SecAggPhase.SHARE)
    ):
        storage_delete_on_commit(upload_chunk_keys(upload))
        return upload_set_status(
            upload, UploadStatus.REJECTED, "secagg_phase", "not expected in this phase"
        )
    job = Job.objects.unscoped().select_related("fl_config").get(pk=round_.job_id)
    if client not in secagg.masked_from:
        total = masked_sum_load(secagg=secagg, dimension=job.fl_config.parameter_count)
        if _add_chunks(total, upload) != total.size:
            storage_delete_on_commit(upload_chunk_keys(upload))
            return upload_set_status(
                upload, UploadStatus.REJECTED, "wrong_length", "not u32[d] after the header"
            )
        key = masked_sum_key(secagg=secagg, count=len(secagg.masked_from) + 1)
        storage_put(key, total.astype("<u4", copy=False).tobytes())
        if secagg.masked_sum_key:
            storage_delete_on_commit([secagg.masked_sum_key])
        secagg.masked_sum_key = key
        secagg.masked_from = sorted([*secagg.masked_from, client])
        secagg.save(update_fields=["masked_sum_key", "masked_from"])
    Participation.objects.unscoped().filter(pk=participation.pk).update(
        status=ParticipationStatus.REPORTED,
        reported_at=timezone.now(),
        update_key=f"fl-uploads/{upload.tenant_id}/{upload.pk}/",
    )
    upload_set_status(upload, UploadStatus.FOLDED)
    if set(secagg.masked_from) >= set(phase_members(secagg=secagg, phase=SecAggPhase.SHARE)):
        phase_close_locked(round_=round_, secagg=secagg, job=job, now=timezone.now())
    return UploadStatus.FOLDED


def secagg_storage_release(*, secagg: SecAggRound, round_: Round) -> None:
    """Delete the unmasking shares now and, once the transaction commits, the masked sum and
    every masked upload of the round (an aborted or finished secure round keeps none of them;
    public keys and the share ciphertexts, which the server cannot read, stay as its record)."""
    SecAggMessage.objects.unscoped().filter(secagg_round=secagg, phase=SecAggPhase.UNMASK).delete()
    uploads = UpdateUpload.objects.unscoped().filter(participation__round=round_)
    keys = [key for upload in uploads for key in upload_chunk_keys(upload)]
    if secagg.masked_sum_key:
        keys.append(secagg.masked_sum_key)
    storage_delete_on_commit(keys)
