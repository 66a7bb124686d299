"""Replacing an invitee that will not report: one that declined (``round_declined``) or dropped
out before uploading while its round is open (its worker offline past a grace).

One replacement per leaver, drawn from the eligible online workers whose contributors are not
yet in the round, by the rules of the cohort draw (``eligible_workers``: pools, capabilities,
one worker per contributor; for a secure or DP job at most ⌊f · cohort⌋ anonymous members among
the round's active invitees). The replacement trains the leaver's public shard from the same
base version. A round takes at most as many replacements as it invited (``cohort_size``), so a
page that always declines cannot set off an invite storm: each contributor is invited to a
round once, and the bound caps the rest.

A secure round can take a replacement only while its advertise-keys phase is open: the
replacement takes the leaver's client slot (same n, neighbour graph and scale). Once the keys
are fixed the cohort cannot change, so no replacement is invited and the round runs with the
survivors (the threshold rule decides).
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Participation, ParticipationStatus, Round, RoundStatus
from jobs.models import Job, JobStatus, Worker
from jobs.privacy.eligibility import anonymous_cap
from jobs.services.fl_rounds_cohort import RoundInvitation, eligible_workers
from jobs.services.fl_rounds_eligibility import is_accounted, is_protected, max_anonymous_fraction
from jobs.services.fl_rounds_invites import participation_invite
from jobs.services.fl_rounds_scaffold import scaffold_invite_controls
from jobs.services.fl_rounds_storage import strategy_state_read
from jobs.services.fl_secagg_groups import groups_in_flight, secure_groups
from tenants.tiers import JobKind

# An invitee whose worker has been offline this long without starting an upload dropped out: a
# reconnect within it resumes (its invite is re-sent), after it the place goes to a replacement.
DROPOUT_GRACE_SECONDS = 30
_GONE = (ParticipationStatus.DECLINED, ParticipationStatus.DROPPED)


def replacement_bound(*, round_: Round) -> int:
    """The most replacements a round invites: as many as it invited at open."""
    return round_.cohort_size


def _candidates(job: Job, round_: Round, leaving: Participation, rng: random.Random) -> list:
    """Eligible workers not yet in the round that keep its anonymous members within the cap."""
    config = job.fl_config
    in_round = set(round_.participations.values_list("contributor_id", flat=True))
    workers = [
        w
        for w in eligible_workers(job=job, config=config, rng=rng)
        if w.contributor_id not in in_round
    ]
    if secure_groups(config):  # a worker is in one open secure group at a time
        busy = set(
            Participation.objects.unscoped()
            .filter(round__in=groups_in_flight(job=job))
            .values_list("worker_id", flat=True)
        )
        workers = [w for w in workers if w.pk not in busy]
    if not is_protected(config):
        return workers
    active = (
        round_.participations.exclude(status__in=_GONE)
        .exclude(pk=leaving.pk)
        .select_related("contributor__user")
    )
    anonymous = sum(1 for p in active if not is_accounted(p.contributor, job=job))
    cap = anonymous_cap(
        cohort=round_.cohort_size, max_fraction=max_anonymous_fraction(job=job, config=config)
    )
    if anonymous < cap:
        return workers
    return [w for w in workers if is_accounted(w.contributor, job=job)]


def round_replace_locked(
    *, round_: Round, leaving: Participation, now: Any = None
) -> RoundInvitation | None:
    """Invite one replacement for ``leaving`` (declined, or about to be marked dropped), or
    None when the round cannot take one: not open or past its deadline, its bound reached, the
    job not running, a secure round past advertise keys, or nobody eligible.

    The caller holds the round's row lock (replacements are counted and drawn under it)."""
    now = now or timezone.now()
    if round_.status != RoundStatus.OPEN or (round_.deadline and round_.deadline <= now):
        return None
    if round_.replacements >= replacement_bound(round_=round_):
        return None
    job = Job.objects.unscoped().select_related("fl_config", "tenant").get(pk=round_.job_id)
    config = job.fl_config
    if job.status != JobStatus.RUNNING or config is None:
        return None
    secure = bool(config.secure_aggregation)  # sync rounds and async secure groups alike
    slot = None
    if secure:
        from jobs.services.fl_secagg import secagg_slot_free  # its phases import the rounds

        slot = secagg_slot_free(round_=round_, participation_id=leaving.pk)
        if slot is None:  # the keys are fixed: the cohort can no longer change
            return None
    rng = random.Random(f"{job.seed}:{round_.number}:replacement:{round_.replacements + 1}")  # noqa: S311 - a reproducible draw
    candidates = _candidates(job, round_, leaving, rng)
    if not candidates:
        return None
    worker: Worker = rng.choice(candidates)
    shard = (leaving.invite.get("data") or {}).get("client_index")
    base = None
    controls = None
    if job.kind != JobKind.ANALYTICS:
        base = ModelVersion.objects.for_tenant(job.tenant).get(
            job=job, version=leaving.base_version
        )
        controls = scaffold_invite_controls(
            job=job, base=base, read_state=lambda: strategy_state_read(job=job, base=base)
        )(shard)
    invitation = participation_invite(
        job=job, round_=round_, worker=worker, base=base, shard=shard, controls=controls
    )
    if slot is not None:
        from jobs.services.fl_secagg import secagg_slot_assign

        secagg_slot_assign(slot=slot, invitation=invitation)
    round_.replacements += 1
    update = ["replacements"]
    if not is_accounted(worker.contributor, job=job):
        round_.anonymous_invited += 1
        update.append("anonymous_invited")
    round_.save(update_fields=update)
    return invitation


@transaction.atomic
def participation_drop_replace(*, participation_id: int, now: Any = None) -> bool:
    """Mark an invitee that dropped out (no upload, worker offline past the grace) dropped and
    invite its replacement → True; left invited (it may still come back and report, or become
    a dropout at the close) when no replacement can be invited → False.

    Locks the round row, then the participation's."""
    now = now or timezone.now()
    round_id = (
        Participation.objects.unscoped()
        .filter(pk=participation_id)
        .values_list("round_id", flat=True)
        .first()
    )
    if round_id is None:
        return False
    round_ = Round.objects.unscoped().select_for_update().get(pk=round_id)
    leaving = (
        Participation.objects.unscoped()
        .select_for_update(of=("self",))
        .select_related("worker")
        .get(pk=participation_id)
    )
    worker = leaving.worker
    if (
        leaving.status != ParticipationStatus.INVITED
        or hasattr(leaving, "upload")
        or worker.is_online
        or worker.disconnected_at is None
        or worker.disconnected_at > now - timedelta(seconds=DROPOUT_GRACE_SECONDS)
    ):
        return False
    if round_replace_locked(round_=round_, leaving=leaving, now=now) is None:
        return False
    leaving.status = ParticipationStatus.DROPPED
    leaving.save(update_fields=["status"])
    return True


def dropouts_replace(*, now: Any = None) -> int:
    """Replace the invitees of open rounds that dropped out before uploading (the sweeper calls
    this); returns how many were replaced."""
    now = now or timezone.now()
    gone = Participation.objects.unscoped().filter(
        status=ParticipationStatus.INVITED,
        round__status=RoundStatus.OPEN,
        round__deadline__gt=now,
        upload__isnull=True,
        worker__is_online=False,
        worker__disconnected_at__lte=now - timedelta(seconds=DROPOUT_GRACE_SECONDS),
    )
    return sum(
        participation_drop_replace(participation_id=pk, now=now)
        for pk in gone.values_list("pk", flat=True)
    )
