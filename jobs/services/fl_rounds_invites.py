"""Round invites: one participation and its ``worker.round_invite`` event per invitee, sent to the
invitee's channel after commit, and the re-send of the invites still pending when a worker
(re)connects.

The consumer's ``worker_round_invite`` turns the event into a ``round_invite`` message. Edge
workers and browser pages train; one that cannot says so (``round_declined``) and is not counted
a dropout.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.utils import timezone

from jobs import realtime
from jobs.fl_artifact_models import ModelVersion, UploadStatus
from jobs.fl_models import Participation, ParticipationStatus, Round, RoundStatus
from jobs.models import Job, Worker
from jobs.services.analytics_invite import analytics_invite_payload
from jobs.services.fl_rounds_cohort import RoundInvitation, round_invite_payload

# Off, invites are only built, stored and returned (tests that drive the round themselves).
SEND_INVITES = True


def participation_invite(
    *,
    job: Job,
    round_: Round,
    worker: Worker,
    base: ModelVersion | None,
    shard: int | None,
    controls: dict[str, Any] | None = None,
) -> RoundInvitation:
    """Create the worker's participation in the round, store its invite (an analytics invite
    when there is no ``base`` model) and send it after commit; the caller holds the locks that
    make the round's membership stable (the job row when opening, the round row later)."""
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
            controls=controls,
        )
    participation.invite = payload
    participation.save(update_fields=["invite"])
    if SEND_INVITES:
        realtime.send_on_commit(worker.channel_name, payload)
    return RoundInvitation(str(worker.pk), worker.channel_name, participation.pk, payload)


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
