"""A worker declines a round it was invited to (``round_declined``): its participation is
recorded as declined, with the reason, instead of waiting to become a dropout at the deadline."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from jobs.fl_models import Participation, ParticipationStatus, RoundStatus


@transaction.atomic
def participation_decline(
    *, worker_id: Any, participation_id: int, reason: str, message: str = ""
) -> bool:
    """Mark this worker's invited participation of an open round declined → True; anything
    else (another worker's, already reported, dropped or declined, a closed round) changes
    nothing → False.

    Locks the participation row: the round's close marks the still-invited ones dropped with
    one UPDATE, which waits for this lock and then skips a row declined here."""
    participation = (
        Participation.objects.unscoped()
        .select_for_update(of=("self",))
        .select_related("round")
        .filter(pk=participation_id, worker_id=worker_id)
        .first()
    )
    if (
        participation is None
        or participation.status != ParticipationStatus.INVITED
        or participation.round.status != RoundStatus.OPEN
    ):
        return False
    participation.status = ParticipationStatus.DECLINED
    participation.rejection_code = reason[:20]
    participation.rejection_message = message[:300]
    participation.save(update_fields=["status", "rejection_code", "rejection_message"])
    return True
