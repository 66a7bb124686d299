"""A worker declines a round it was invited to (``round_declined``): its participation is
recorded as declined, with the reason, instead of waiting to become a dropout at the deadline,
and its place goes to a replacement when the round can take one (``fl_rounds_replace``)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from jobs.fl_models import Participation, ParticipationStatus, Round, RoundStatus
from jobs.services.fl_rounds_replace import round_replace_locked


@transaction.atomic
def participation_decline(
    *, worker_id: Any, participation_id: int, reason: str, message: str = ""
) -> bool:
    """Mark this worker's invited participation of an open round declined and invite one
    replacement if the round can take one → True; anything else (another worker's, already
    reported, dropped or declined, a closed round) changes nothing → False.

    Locks the round row, then the participation's (the order of the round's close, which marks
    the still-invited ones dropped, and of the fold): a decline that crossed the close finds
    the round closed and changes nothing."""
    round_id = (
        Participation.objects.unscoped()
        .filter(pk=participation_id, worker_id=worker_id)
        .values_list("round_id", flat=True)
        .first()
    )
    if round_id is None:
        return False
    round_ = Round.objects.unscoped().select_for_update().get(pk=round_id)
    participation = (
        Participation.objects.unscoped().select_for_update(of=("self",)).get(pk=participation_id)
    )
    if participation.status != ParticipationStatus.INVITED or round_.status != RoundStatus.OPEN:
        return False
    participation.status = ParticipationStatus.DECLINED
    participation.rejection_code = reason[:20]
    participation.rejection_message = message[:300]
    participation.save(update_fields=["status", "rejection_code", "rejection_message"])
    round_replace_locked(round_=round_, leaving=participation)
    return True
