"""FL update uploads: chunked, resumable, checked per chunk and whole, then queued for the fold
(``fl_rounds_fold``).

The body of an upload is the training kernel's v2 output for a successful ``train`` call: a
32-byte metrics header (status, samples, loss sum, correct, d, update norm) then the update f32[d].
Each chunk is an object of its own in the default storage, keyed by its index and SHA-256, so a
re-sent chunk is a no-op and a resumed upload sends only what is missing. Nothing of the update is
held whole in memory: completion hashes the chunks one by one and the fold reads them twice (once
to validate, once to add), one chunk at a time.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from jobs.fl_artifact_models import UpdateUpload, UploadStatus
from jobs.fl_models import (
    DataSource,
    FlMode,
    Participation,
    ParticipationStatus,
    Round,
    RoundStatus,
)
from jobs.models import Contributor, JobStatus
from jobs.services.fl_data import has_public_partition, partition_sizes
from jobs.services.fl_rounds_cohort import (
    MAX_CHUNK_BYTES,
    UPDATE_HEADER_BYTES,
    update_total_bytes,
)
from jobs.services.fl_rounds_compression import (
    BAD_ENCODING,
    HEADER_BYTES,
    is_compressed,
    payload_rejection,
)
from jobs.services.fl_rounds_storage import (
    chunk_key,
    storage_delete_on_commit,
    storage_put,
    upload_chunk_keys,
)

_METRICS = struct.Struct("<IIdII d")  # the kernel ABI v2 metrics header
# A declared sample count above the client's shard: the fold weight would be a lie.
SAMPLES_EXCEEDED = "samples_exceeded"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MIN_CHUNK_BYTES = 64


class UploadError(ValueError):
    """A request the upload protocol refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    index: int
    stored: bool  # False: this chunk was already accepted (an idempotent re-send)


def _participation_for(*, contributor: Contributor, participation_id: int) -> Participation:
    participation = (
        Participation.objects.unscoped()
        .select_for_update(of=("self",))
        .select_related("round__job__fl_config")
        .filter(pk=participation_id, contributor=contributor)
        .first()
    )
    if participation is None:  # another contributor's (or tenant's) participation: not found
        raise UploadError("not_found", "no such participation", status=404)
    return participation


def participation_mark_late(participation: Participation) -> None:
    """A round closed before this update: a straggler, counted once on its own round."""
    marked = (
        Participation.objects.unscoped()
        .filter(
            pk=participation.pk,
            status__in=[ParticipationStatus.INVITED, ParticipationStatus.DROPPED],
        )
        .update(status=ParticipationStatus.LATE, reported_at=timezone.now())
    )
    if marked:
        round_ = (
            Round.objects.unscoped().select_for_update(of=("self",)).get(pk=participation.round_id)
        )
        round_.stragglers += 1
        round_.save(update_fields=["stragglers"])


class _LateUpdate(Exception):  # noqa: N818 - internal control flow
    pass


def update_upload_create(
    *,
    contributor: Contributor,
    participation_id: int,
    total_bytes: int,
    chunk_size: int,
    sha256: str,
    base_version: int,
) -> UpdateUpload:
    """Start (or, with the same parameters, resume) the one upload of a participation.

    An upload for a synchronous round that already closed is refused, and its participation is
    recorded as a straggler (in its own transaction, so the refusal does not roll it back).
    """
    try:
        return _upload_create(
            contributor=contributor,
            participation_id=participation_id,
            total_bytes=total_bytes,
            chunk_size=chunk_size,
            sha256=sha256,
            base_version=base_version,
        )
    except _LateUpdate:
        with transaction.atomic():
            participation = (
                Participation.objects.unscoped().select_for_update().get(pk=participation_id)
            )
            participation_mark_late(participation)
        raise UploadError(
            "round_closed", "the round closed before this update", status=409
        ) from None


@transaction.atomic
def _upload_create(
    *,
    contributor: Contributor,
    participation_id: int,
    total_bytes: int,
    chunk_size: int,
    sha256: str,
    base_version: int,
) -> UpdateUpload:
    participation = _participation_for(contributor=contributor, participation_id=participation_id)
    round_ = participation.round
    config = round_.job.fl_config
    expected = update_total_bytes(config=config)
    if total_bytes != expected:
        raise UploadError("wrong_length", f"an update of this model is {expected} bytes")
    if not MIN_CHUNK_BYTES <= chunk_size <= MAX_CHUNK_BYTES or chunk_size % 4:
        raise UploadError(
            "bad_chunk_size",
            f"chunk size must be a multiple of 4 from {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES}",
        )
    if not _SHA256.match(sha256 or ""):
        raise UploadError("bad_sha256", "sha256 must be 64 lowercase hex digits")
    existing = UpdateUpload.objects.unscoped().filter(participation=participation).first()
    if existing is not None:
        if (existing.total_bytes, existing.chunk_size, existing.sha256) != (
            total_bytes,
            chunk_size,
            sha256,
        ):
            raise UploadError("conflict", "this participation already has an upload", status=409)
        return existing
    if round_.job.status != JobStatus.RUNNING:
        raise UploadError("job_not_running", "the job is not running", status=409)
    if round_.status != RoundStatus.OPEN and config.mode != FlMode.ASYNC:
        raise _LateUpdate
    allowed = [ParticipationStatus.INVITED]
    if config.mode == FlMode.ASYNC:  # an async dropout may still join a later buffer
        allowed.append(ParticipationStatus.DROPPED)
    if participation.status not in allowed:
        raise UploadError("not_invited", f"participation is {participation.status}", status=409)
    return UpdateUpload.objects.create(
        tenant_id=participation.tenant_id,
        participation=participation,
        total_bytes=total_bytes,
        chunk_size=chunk_size,
        sha256=sha256,
        base_version=base_version,
    )


def update_upload_get(*, contributor: Contributor, upload_id: str) -> UpdateUpload:
    """The contributor's own upload (anyone else's is not found)."""
    upload = (
        UpdateUpload.objects.unscoped()
        .filter(pk=upload_id, participation__contributor=contributor)
        .first()
    )
    if upload is None:
        raise UploadError("not_found", "no such upload", status=404)
    return upload


def chunk_expected_bytes(*, upload: UpdateUpload, index: int) -> int:
    """Length of chunk ``index``: the chunk size, or what remains for the last one."""
    return min(upload.chunk_size, upload.total_bytes - index * upload.chunk_size)


@transaction.atomic
def update_upload_chunk_put(
    *, upload: UpdateUpload, index: int, data: bytes, chunk_sha256: str
) -> ChunkOutcome:
    """Store chunk ``index`` after checking its length and SHA-256; idempotent per index.

    Locks the upload row, so concurrent chunks of one upload record one after the other.
    """
    upload = UpdateUpload.objects.unscoped().select_for_update().get(pk=upload.pk)
    if not 0 <= index < upload.chunk_count:
        raise UploadError("bad_index", f"chunk index must be 0 to {upload.chunk_count - 1}")
    digest = hashlib.sha256(data).hexdigest()
    recorded = upload.chunks.get(str(index))
    if recorded is not None:
        if recorded == digest:
            return ChunkOutcome(index, stored=False)
        raise UploadError("conflict", f"chunk {index} was accepted with other bytes", status=409)
    if upload.status != UploadStatus.RECEIVING:
        raise UploadError("not_receiving", f"upload is {upload.status}", status=409)
    if len(data) != chunk_expected_bytes(upload=upload, index=index):
        raise UploadError(
            "wrong_length",
            f"chunk {index} must be {chunk_expected_bytes(upload=upload, index=index)} bytes",
        )
    if (chunk_sha256 or "").lower() != digest:
        raise UploadError("checksum_mismatch", f"chunk {index} does not match X-Chunk-SHA256")
    storage_put(chunk_key(upload=upload, index=index, sha256=digest), data)
    upload.chunks = {**upload.chunks, str(index): digest}
    upload.save(update_fields=["chunks"])
    return ChunkOutcome(index, stored=True)


def _chunks(upload: UpdateUpload) -> Iterator[bytes]:
    for index in range(upload.chunk_count):
        key = chunk_key(upload=upload, index=index, sha256=upload.chunks[str(index)])
        with default_storage.open(key, "rb") as handle:
            yield handle.read()


def update_chunks(*, upload: UpdateUpload) -> Iterator[bytes]:
    """The update f32[d] as little-endian chunks, the metrics header skipped (for the fold)."""
    for index, chunk in enumerate(_chunks(upload)):
        yield chunk[UPDATE_HEADER_BYTES:] if index == 0 else chunk


def samples_cap(*, participation: Participation) -> int | None:
    """The most samples this participation may declare: the size of the public partition
    client it was invited to train, or the job's ``max_local_samples`` for contributors' own
    data (which the server cannot see)."""
    config = participation.round.job.fl_config
    if config.data_source == DataSource.CONTRIBUTOR_LOCAL:
        return config.max_local_samples
    index = (participation.invite.get("data") or {}).get("client_index")
    if not has_public_partition(config) or not isinstance(index, int):
        return None
    sizes = partition_sizes(participation.round.job)
    return sizes[index] if 0 <= index < len(sizes) else 0


def upload_reject(upload: UpdateUpload, code: str, message: str) -> None:
    storage_delete_on_commit(upload_chunk_keys(upload))  # a rejected update is never read again
    upload.status = UploadStatus.REJECTED
    upload.rejection_code = code
    upload.rejection_message = message[:300]
    upload.save(update_fields=["status", "rejection_code", "rejection_message"])
    Participation.objects.unscoped().filter(pk=upload.participation_id).update(
        status=ParticipationStatus.REJECTED,
        rejection_code=code,
        rejection_message=message[:300],
        reported_at=timezone.now(),
    )


@transaction.atomic
def update_upload_complete(*, upload: UpdateUpload) -> UpdateUpload:
    """Check the whole upload (every chunk, its SHA-256, the metrics header) and queue its fold
    after commit; a bad upload is rejected with a reason and its participation with it.

    Idempotent: completing a completed, folded or rejected upload returns it unchanged.
    """
    from jobs import tasks  # the task module imports the services

    upload = UpdateUpload.objects.unscoped().select_for_update().get(pk=upload.pk)
    if upload.status != UploadStatus.RECEIVING:
        return upload
    missing = [i for i in range(upload.chunk_count) if str(i) not in upload.chunks]
    if missing:
        raise UploadError("incomplete", f"{len(missing)} chunks missing, first {missing[0]}")
    whole = hashlib.sha256()
    header = b""
    for chunk in _chunks(upload):
        whole.update(chunk)
        if not header:
            header = chunk[: UPDATE_HEADER_BYTES + HEADER_BYTES]  # metrics, a payload's header
    if whole.hexdigest() != upload.sha256:
        upload_reject(upload, "sha256_mismatch", "the chunks do not hash to the declared sha256")
        return upload
    status, samples, loss_sum, correct, dimension, _norm = _METRICS.unpack_from(header)
    config = upload.participation.round.job.fl_config
    if status != 0 or dimension != config.parameter_count or samples == 0:
        upload_reject(upload, "malformed", f"metrics header: status {status}, d {dimension}")
        return upload
    if not math.isfinite(loss_sum) or correct > samples:
        upload_reject(upload, "non_finite", "metrics header: loss not finite or correct > samples")
        return upload
    if is_compressed(config):
        reason = payload_rejection(config=config, head=header[UPDATE_HEADER_BYTES:])
        if reason is not None:
            upload_reject(upload, BAD_ENCODING, reason)
            return upload
    cap = samples_cap(participation=upload.participation)
    if cap is not None and samples > cap:
        upload_reject(
            upload,
            SAMPLES_EXCEEDED,
            f"metrics header declares {samples} samples; this client may declare at most {cap}",
        )
        return upload
    Participation.objects.unscoped().filter(pk=upload.participation_id).update(
        samples=samples, loss_sum=loss_sum, correct=correct, base_version=upload.base_version
    )
    upload.status = UploadStatus.COMPLETE
    upload.completed_at = timezone.now()
    upload.save(update_fields=["status", "completed_at"])
    upload_id = str(upload.pk)
    transaction.on_commit(lambda: tasks.update_fold.delay(upload_id))
    return upload


def upload_set_status(
    upload: UpdateUpload, status: UploadStatus, code: str = "", message: str = ""
) -> UploadStatus:
    if status == UploadStatus.REJECTED:
        storage_delete_on_commit(upload_chunk_keys(upload))
    upload.status = status
    upload.rejection_code = code
    upload.rejection_message = message[:300]
    upload.save(update_fields=["status", "rejection_code", "rejection_message"])
    return status
