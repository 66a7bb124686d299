"""Secure FL rounds over the wire: the four SecAgg+ phases, each fixed once in PostgreSQL.

A sync round of a job with ``secure_aggregation`` runs advertise keys → share keys → masked
input → unmask (docs/security.md). Each phase has a deadline (a Celery task scheduled at it, and
``secagg_sweep`` as the backstop) and closes early once every expected client has answered. A
close runs under the round's row lock, writes the phase's set (``SecAggPhaseSet``, unique per
round and phase, so several Daphne processes agree), checks that every client that must be
unmasked keeps at least t neighbours (the pure ``SecAggServer`` does the checking), and sends the
next phase's messages after commit. Masked inputs arrive through the chunked upload path and are
folded as a modular sum (``fl_secagg_fold``); unmasking runs in Celery (``fl_secagg_unmask``).
Any phase below threshold aborts the round: recorded reason, no model version, no charge,
every participant told.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from ccgsc_worker.secagg.wire import b64decode, b64encode
from jobs.analytics_models import ANALYTICS_KERNEL
from jobs.fl_models import FlConfig, FlMode, Participation, Round, RoundStatus
from jobs.models import Job
from jobs.secagg import RoundConfig, scale_for
from jobs.secagg import primitives as p
from jobs.secagg_models import SecAggMessage, SecAggPhase, SecAggRound
from jobs.services.analytics_secagg import analytics_secagg_encoding
from jobs.services.fl_privacy import secagg_plan
from jobs.services.fl_rounds_dp_distributed import distributed_noise_active, distributed_share_plan
from jobs.services.fl_secagg_phases import phase_close_locked, schedule_close
from jobs.services.fl_secagg_state import (
    DEFAULT_BOUND,
    ID_HEAD,
    INBOUND_PHASES,
    SHARE_HEAD,
    UNMASK_GRACE_SECONDS,
    SecAggRefused,
    phase_members,
    phase_seconds,
    round_config,
)

# ---------------------------------------------------------------- opening


def secagg_round_open(
    *,
    round: Round,  # noqa: A002 - the model's name
    config: FlConfig,
    invitations: list[Any],
) -> SecAggRound:
    """Set up a secure round just opened by ``round_open`` (in its transaction, before the
    invites are sent): clients 1..n in cohort order, t and the survivors' minimum, the fixed-point
    scale for n clients, a fresh public session id and graph seed; add the ``secagg`` block to
    every invite (with distributed DP its ``noise``: the share each client adds, and a scale
    with headroom for the shares) and move the round's deadline past the four phases."""
    n = len(invitations)
    plan = secagg_plan(config=config, invited=n)
    sync = config.mode == FlMode.SYNC
    bound = float(config.dp_clip_norm or DEFAULT_BOUND)
    scale = scale_for(n_clients=max(n, 1), bound=bound)
    if config.model_kernel == ANALYTICS_KERNEL:  # a vector of sums, not a clipped update
        bound, scale = analytics_secagg_encoding(job=round.job, n_clients=max(n, 1))
    now = timezone.now()
    step = phase_seconds(config)
    # round_close aggregates only at min_reports (capped by the cohort): never fewer. An async
    # group aggregates whatever survives its phases: its minimum is the plan's.
    min_survivors = max(plan.min_survivors, min(config.min_reports, n) if sync else 1, 1)
    noise = None  # distributed DP: the clients' shares, sized for the honest minimum
    if distributed_noise_active(config):
        noise = distributed_share_plan(
            config=config,
            invited=n,
            min_survivors=min_survivors,
            anonymous=round.anonymous_invited,
        )
    secagg = SecAggRound.objects.create(
        tenant_id=round.tenant_id,
        round=round,
        phase=SecAggPhase.ADVERTISE,
        phase_deadline=now + timedelta(seconds=step),
        clients={str(i): inv.participation_id for i, inv in enumerate(invitations, start=1)},
        threshold=max(1, plan.threshold),
        min_survivors=min_survivors,
        scale=noise.scale if noise else scale,
        bound=bound,
        session=os.urandom(32),
        graph_seed=os.urandom(32),
    )
    round.deadline = now + timedelta(
        seconds=3 * step + config.round_deadline_seconds + UNMASK_GRACE_SECONDS
    )
    round.save(update_fields=["deadline"])
    for client, invitation in enumerate(invitations, start=1):
        _invite_secagg(secagg, client, invitation, noise=noise.invite_block if noise else None)
    schedule_close(secagg)
    return secagg


def _invite_secagg(
    secagg: SecAggRound, client: int, invitation: Any, *, noise: dict[str, Any] | None
) -> None:
    """Add the round's ``secagg`` block for ``client`` to an invite not yet sent (it goes after
    commit, as stored here); with distributed DP, ``noise`` is the share every client adds."""
    invitation.payload["deadline"] = secagg.round.deadline.isoformat()
    invitation.payload["secagg"] = {
        "client": client,
        "clients": len(secagg.clients),
        "threshold": secagg.threshold,
        "session": b64encode(bytes(secagg.session)),
        "graph_seed": b64encode(bytes(secagg.graph_seed)),
        "scale": secagg.scale,
        "bound": secagg.bound,
    }
    if noise is not None:
        invitation.payload["secagg"]["noise"] = noise
    Participation.objects.unscoped().filter(pk=invitation.participation_id).update(
        invite=invitation.payload
    )


# ---------------------------------------------------------------- replacements


@dataclass(frozen=True, slots=True)
class SecAggSlot:
    """A client number of a secure round whose invitee left before advertising its keys."""

    secagg: SecAggRound
    client: int


def secagg_slot_free(*, round_: Round, participation_id: int) -> SecAggSlot | None:
    """The leaver's client slot, free for a replacement while advertise keys is open and the
    leaver advertised nothing; None otherwise (the keys are fixed: n, the neighbour graph and
    every pairwise mask depend on who advertised, so nobody can join after).

    The caller holds the round's row lock; this locks the secure round's row."""
    secagg = SecAggRound.objects.unscoped().select_for_update().filter(round=round_).first()
    if secagg is None or secagg.phase != SecAggPhase.ADVERTISE:
        return None
    try:
        client = _client_of(secagg, participation_id)
    except SecAggRefused:
        return None
    advertised = SecAggMessage.objects.unscoped().filter(
        secagg_round=secagg, phase=SecAggPhase.ADVERTISE, client=client
    )
    return None if advertised.exists() else SecAggSlot(secagg, client)


def secagg_slot_assign(*, slot: SecAggSlot, invitation: Any) -> None:
    """Give the slot to the replacement's participation and add the round's ``secagg`` block
    to its invite (same n, graph seed, scale and noise share as everyone's); under both row
    locks."""
    secagg = slot.secagg
    leaver = Participation.objects.unscoped().get(pk=secagg.clients[str(slot.client)])
    noise = (leaver.invite.get("secagg") or {}).get("noise")
    secagg.clients = {**secagg.clients, str(slot.client): invitation.participation_id}
    secagg.save(update_fields=["clients"])
    _invite_secagg(secagg, slot.client, invitation, noise=noise)


# ---------------------------------------------------------------- messages


def _client_of(secagg: SecAggRound, participation_id: int) -> int:
    for client, pid in secagg.clients.items():
        if pid == participation_id:
            return int(client)
    raise SecAggRefused("not a member of this secure round")


def _expected_senders(secagg: SecAggRound, phase: str) -> set[int]:
    if phase == SecAggPhase.ADVERTISE:
        return {int(c) for c in secagg.clients}
    if phase == SecAggPhase.SHARE:
        return set(phase_members(secagg=secagg, phase=SecAggPhase.ADVERTISE))
    if phase == SecAggPhase.MASKED_INPUT:
        return set(phase_members(secagg=secagg, phase=SecAggPhase.SHARE))
    return set(phase_members(secagg=secagg, phase=SecAggPhase.MASKED_INPUT))


def _decode(value: str, length: int | None, what: str) -> bytes:
    try:
        data = b64decode(value)
    except ValueError as exc:
        raise SecAggRefused(f"{what} is not base64url") from exc
    if length is not None and len(data) != length:
        raise SecAggRefused(f"{what} must be {length} bytes")
    return data


def _payload(secagg: SecAggRound, config: RoundConfig, client: int, message: dict) -> bytes:
    """Check a client's message against the graph and the phase's set; its stored bytes."""
    kind = message["type"]
    neighbours = config.graph()[client]
    if kind == "secagg_advertise":
        cipher = _decode(message["cipher_public"], 32, "cipher_public")
        mask = _decode(message["mask_public"], 32, "mask_public")
        return cipher + mask
    if kind == "secagg_share_keys":
        expected = neighbours & set(phase_members(secagg=secagg, phase=SecAggPhase.ADVERTISE))
        items = {int(item["client"]): item["ciphertext"] for item in message["ciphertexts"]}
        if len(items) != len(message["ciphertexts"]) or set(items) != expected:
            raise SecAggRefused("send one ciphertext per neighbour that advertised")
        parts = []
        for receiver in sorted(items):
            ciphertext = _decode(items[receiver], None, "ciphertext")
            if len(ciphertext) != 2 * p.SHARE_BYTES + 16:
                raise SecAggRefused("a ciphertext holds two 33-byte shares and a 16-byte tag")
            parts.append(SHARE_HEAD.pack(receiver, len(ciphertext)) + ciphertext)
        return b"".join(parts)
    shared = set(phase_members(secagg=secagg, phase=SecAggPhase.SHARE))
    items = {int(item["client"]): item["share"] for item in message["shares"]}
    if len(items) != len(message["shares"]) or not set(items) <= neighbours & shared:
        raise SecAggRefused("shares only for neighbours that shared keys, once each")
    parts = []
    for holder in sorted(items):
        share = _decode(items[holder], p.SHARE_BYTES, "share")
        if int.from_bytes(share, "big") >= p.PRIME:
            raise SecAggRefused("a share outside the field")
        parts.append(ID_HEAD.pack(holder) + share)
    return b"".join(parts)


@transaction.atomic
def secagg_message_receive(*, contributor_id: Any, message: dict[str, Any]) -> bool:
    """Record one client's phase message (validated by the consumer against its schema), and
    close the phase when it was the last one expected; True when it was recorded.

    Locks the round row, then its secure-aggregation row. Raises ``SecAggRefused`` (nothing
    recorded) for a participation that is not the sender's, a round that is not secure or not
    in that phase, a sender outside the phase's set, or keys, ciphertexts or shares that do not
    fit the neighbour graph. A repeated message is ignored (the first copy counts).
    """
    phase = INBOUND_PHASES[message["type"]]
    participation = (
        Participation.objects.unscoped()
        .filter(pk=message["participation"], contributor_id=contributor_id)
        .first()
    )
    if participation is None:
        raise SecAggRefused("no such participation")
    round_ = Round.objects.unscoped().select_for_update().get(pk=participation.round_id)
    secagg = SecAggRound.objects.unscoped().select_for_update().filter(round=round_).first()
    if secagg is None:
        raise SecAggRefused("this round does not use secure aggregation")
    if round_.status != RoundStatus.OPEN or secagg.phase != phase:
        raise SecAggRefused(f"the round is in phase {secagg.phase}, not {phase}")
    client = _client_of(secagg, participation.pk)
    expected = _expected_senders(secagg, phase)
    if client not in expected:
        raise SecAggRefused(f"client {client} is not in this phase's set")
    job = Job.objects.unscoped().select_related("fl_config").get(pk=round_.job_id)
    payload = _payload(secagg, round_config(secagg=secagg, job=job), client, message)
    created = SecAggMessage.objects.bulk_create(
        [
            SecAggMessage(
                tenant_id=round_.tenant_id,
                secagg_round=secagg,
                phase=phase,
                client=client,
                payload=payload,
            )
        ],
        ignore_conflicts=True,
    )
    senders = set(
        SecAggMessage.objects.unscoped()
        .filter(secagg_round=secagg, phase=phase)
        .values_list("client", flat=True)
    )
    if senders >= expected:
        phase_close_locked(round_=round_, secagg=secagg, job=job, now=timezone.now())
    return bool(created)
