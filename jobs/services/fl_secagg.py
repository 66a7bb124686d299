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
import struct
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from ccgsc_worker.secagg.wire import b64decode, b64encode
from jobs import realtime
from jobs.fl_models import FlConfig, Participation, Round, RoundStatus
from jobs.models import Job, JobStatus, Worker
from jobs.secagg import RoundAborted, RoundConfig, SecAggServer, scale_for
from jobs.secagg import primitives as p
from jobs.secagg_models import SecAggMessage, SecAggPhase, SecAggPhaseSet, SecAggRound
from jobs.services.fl_privacy import secagg_plan

# Coordinates are clipped to ±bound before encoding: the DP clip norm when set (an L2 bound is
# also a bound on every coordinate), otherwise this.
DEFAULT_BOUND = 1.0
# Celery gets this long after the unmask phase closes before the sweeper re-queues it.
UNMASK_GRACE_SECONDS = 120
WAITING_PHASES = (
    SecAggPhase.ADVERTISE,
    SecAggPhase.SHARE,
    SecAggPhase.MASKED_INPUT,
    SecAggPhase.UNMASK,
)
INBOUND_PHASES = {
    "secagg_advertise": SecAggPhase.ADVERTISE,
    "secagg_share_keys": SecAggPhase.SHARE,
    "secagg_unmask_shares": SecAggPhase.UNMASK,
}
_SHARE_HEAD = struct.Struct(">IH")
_ID = struct.Struct(">I")


class SecAggRefused(ValueError):
    """A client's secure-aggregation message the round refuses; nothing was recorded."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = "secagg_refused"
        self.message = message


def phase_seconds(config: FlConfig) -> int:
    """The deadline of the key phases and of unmasking (the masked-input phase gets the
    round's training deadline): a sixth of the round deadline, at least 5 s."""
    return max(5, config.round_deadline_seconds // 6)


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
    every invite and move the round's deadline past the four phases."""
    n = len(invitations)
    plan = secagg_plan(config=config, invited=n)
    bound = float(config.dp_clip_norm or DEFAULT_BOUND)
    now = timezone.now()
    step = phase_seconds(config)
    secagg = SecAggRound.objects.create(
        tenant_id=round.tenant_id,
        round=round,
        phase=SecAggPhase.ADVERTISE,
        phase_deadline=now + timedelta(seconds=step),
        clients={str(i): inv.participation_id for i, inv in enumerate(invitations, start=1)},
        threshold=max(1, plan.threshold),
        # round_close aggregates only at min_reports (capped by the cohort): never fewer.
        min_survivors=max(plan.min_survivors, min(config.min_reports, n), 1),
        scale=scale_for(n_clients=max(n, 1), bound=bound),
        bound=bound,
        session=os.urandom(32),
        graph_seed=os.urandom(32),
    )
    round.deadline = now + timedelta(
        seconds=3 * step + config.round_deadline_seconds + UNMASK_GRACE_SECONDS
    )
    round.save(update_fields=["deadline"])
    for client, invitation in enumerate(invitations, start=1):
        invitation.payload["deadline"] = round.deadline.isoformat()
        invitation.payload["secagg"] = {
            "client": client,
            "clients": n,
            "threshold": secagg.threshold,
            "session": b64encode(bytes(secagg.session)),
            "graph_seed": b64encode(bytes(secagg.graph_seed)),
            "scale": secagg.scale,
            "bound": bound,
        }
        Participation.objects.for_tenant(round.tenant).filter(
            pk=invitation.participation_id
        ).update(invite=invitation.payload)
    _schedule_close(secagg)
    return secagg


def round_config(*, secagg: SecAggRound, job: Job) -> RoundConfig:
    """The pure module's view of a secure round (the same the clients build from the invite)."""
    return RoundConfig(
        job=str(job.pk),
        round_number=secagg.round.number,
        session_id=bytes(secagg.session),
        graph_seed=bytes(secagg.graph_seed),
        client_ids=tuple(range(1, len(secagg.clients) + 1)),
        dimension=job.fl_config.parameter_count,
        threshold=secagg.threshold,
    )


# ---------------------------------------------------------------- messages


def _client_of(secagg: SecAggRound, participation_id: int) -> int:
    for client, pid in secagg.clients.items():
        if pid == participation_id:
            return int(client)
    raise SecAggRefused("not a member of this secure round")


def phase_members(*, secagg: SecAggRound, phase: str) -> list[int]:
    """The fixed set of a closed phase ([] when it has not closed)."""
    row = SecAggPhaseSet.objects.unscoped().filter(secagg_round=secagg, phase=phase).first()
    return list(row.members) if row else []


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
            parts.append(_SHARE_HEAD.pack(receiver, len(ciphertext)) + ciphertext)
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
        parts.append(_ID.pack(holder) + share)
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


# ---------------------------------------------------------------- closing phases


def messages_of(*, secagg: SecAggRound, phase: str) -> dict[int, bytes]:
    """Client → stored payload of one phase."""
    rows = SecAggMessage.objects.unscoped().filter(secagg_round=secagg, phase=phase)
    return {row.client: bytes(row.payload) for row in rows}


def split_shares_payload(payload: bytes) -> dict[int, bytes]:
    """A stored share-keys payload → receiver → ciphertext."""
    out, offset = {}, 0
    while offset < len(payload):
        receiver, length = _SHARE_HEAD.unpack_from(payload, offset)
        offset += _SHARE_HEAD.size
        out[receiver] = payload[offset : offset + length]
        offset += length
    return out


def split_unmask_payload(payload: bytes) -> dict[int, bytes]:
    """A stored unmask payload → neighbour → 33-byte share."""
    step = _ID.size + p.SHARE_BYTES
    return {
        _ID.unpack_from(payload, i)[0]: payload[i + _ID.size : i + step]
        for i in range(0, len(payload), step)
    }


def server_for(*, secagg: SecAggRound, job: Job, until: str) -> SecAggServer:
    """The pure server rebuilt from PostgreSQL, with every phase before ``until`` closed."""
    server = SecAggServer(round_config(secagg=secagg, job=job))
    server.advertised = {
        client: {"cipher_public": payload[:32], "mask_public": payload[32:]}
        for client, payload in messages_of(secagg=secagg, phase=SecAggPhase.ADVERTISE).items()
    }
    if until == SecAggPhase.ADVERTISE:
        return server
    u1 = set(phase_members(secagg=secagg, phase=SecAggPhase.ADVERTISE))
    server.advertised = {c: k for c, k in server.advertised.items() if c in u1}
    server.phase = "share"
    server.shared = {
        client: split_shares_payload(payload)
        for client, payload in messages_of(secagg=secagg, phase=SecAggPhase.SHARE).items()
    }
    if until == SecAggPhase.SHARE:
        return server
    u2 = set(phase_members(secagg=secagg, phase=SecAggPhase.SHARE))
    server.shared = {c: s for c, s in server.shared.items() if c in u2}
    server.phase = "masked_input"
    server.masked_from = {int(c) for c in secagg.masked_from}
    if until == SecAggPhase.MASKED_INPUT:
        return server
    fixed = SecAggPhaseSet.objects.unscoped().get(
        secagg_round=secagg, phase=SecAggPhase.MASKED_INPUT
    )
    server.alive, server.dropped = tuple(fixed.members), tuple(fixed.dropped)
    server.masked_from = set(fixed.members)
    server.phase = "unmask"
    server.unmask_shares = {
        client: split_unmask_payload(payload)
        for client, payload in messages_of(secagg=secagg, phase=SecAggPhase.UNMASK).items()
        if client in server.masked_from
    }
    return server


def _fix(secagg: SecAggRound, phase: str, members: list[int], dropped: list[int]) -> None:
    SecAggPhaseSet.objects.create(
        tenant_id=secagg.tenant_id,
        secagg_round=secagg,
        phase=phase,
        members=sorted(members),
        dropped=sorted(dropped),
    )


def _send(secagg: SecAggRound, clients: list[int], kind: str, build: Any) -> None:
    """Send each client's message to its worker's current channel after commit."""
    pids = {int(c): pid for c, pid in secagg.clients.items()}
    channels = dict(
        Worker.objects.filter(participations__pk__in=[pids[c] for c in clients]).values_list(
            "participations__pk", "channel_name"
        )
    )
    deadline = secagg.phase_deadline.isoformat() if kind != "secagg_abort" else None
    for client in clients:
        fields = {"participation": pids[client], "round": secagg.round.number, **build(client)}
        realtime.send_on_commit(
            channels.get(pids[client], ""),
            {"type": "worker.secagg", "kind": kind, "fields": fields, "deadline": deadline},
        )


def _advance(secagg: SecAggRound, phase: str, seconds: float, now: Any) -> None:
    secagg.phase = phase
    secagg.phase_deadline = now + timedelta(seconds=seconds)
    secagg.save(update_fields=["phase", "phase_deadline"])
    _schedule_close(secagg)


def _schedule_close(secagg: SecAggRound) -> None:
    from jobs import tasks  # the task module imports the services

    round_id, phase, eta = secagg.round_id, secagg.phase, secagg.phase_deadline
    transaction.on_commit(lambda: tasks.secagg_phase_close.apply_async((round_id, phase), eta=eta))


def phase_close_locked(*, round_: Round, secagg: SecAggRound, job: Job, now: Any) -> None:
    """Fix the current phase's set and start the next phase, or abort the round.

    The caller holds the round's and the secure round's row locks."""
    config = job.fl_config
    phase = secagg.phase
    try:
        server = server_for(secagg=secagg, job=job, until=phase)
        if phase == SecAggPhase.ADVERTISE:
            keys = server.close_advertise()
            _check_survivors(secagg, len(keys), "advertised")
            _fix(secagg, phase, list(keys), [])
            _advance(secagg, SecAggPhase.SHARE, phase_seconds(config), now)
            _send(secagg, sorted(keys), "secagg_keys", lambda c: {"keys": _keys_field(keys[c])})
        elif phase == SecAggPhase.SHARE:
            relayed = server.close_share()
            _check_survivors(secagg, len(relayed), "shared keys")
            _fix(secagg, phase, list(relayed), [])
            _advance(secagg, SecAggPhase.MASKED_INPUT, config.round_deadline_seconds, now)
            _send(
                secagg,
                sorted(relayed),
                "secagg_ciphertexts",
                lambda c: {
                    "ciphertexts": [
                        {"client": j, "ciphertext": b64encode(ct)}
                        for j, ct in sorted(relayed[c].items())
                    ]
                },
            )
        elif phase == SecAggPhase.MASKED_INPUT:
            request = server.close_masked_input()
            _check_survivors(secagg, len(request["alive"]), "sent a masked input")
            _fix(secagg, phase, request["alive"], request["dropped"])
            _advance(secagg, SecAggPhase.UNMASK, phase_seconds(config), now)
            graph = server.config.graph()
            alive, dropped = set(request["alive"]), set(request["dropped"])
            _send(
                secagg,
                request["alive"],
                "secagg_unmask",
                lambda c: {
                    "alive": sorted((graph[c] | {c}) & alive),
                    "dropped": sorted(graph[c] & dropped),
                },
            )
        elif phase == SecAggPhase.UNMASK:
            answered = set(server.unmask_shares)
            server._check_neighbours(  # noqa: SLF001 - the pure server's own threshold rule
                set(server.alive) | set(server.dropped), answered, "answering"
            )
            _fix(secagg, phase, sorted(answered), [])
            _advance(secagg, SecAggPhase.UNMASKING, UNMASK_GRACE_SECONDS, now)
            _queue_unmask(round_.pk)
    except RoundAborted as exc:
        secagg_abort_locked(round_=round_, secagg=secagg, job=job, reason=str(exc), now=now)


def _keys_field(keys: dict[int, dict[str, bytes]]) -> list[dict[str, Any]]:
    return [
        {
            "client": client,
            "cipher_public": b64encode(pair["cipher_public"]),
            "mask_public": b64encode(pair["mask_public"]),
        }
        for client, pair in sorted(keys.items())
    ]


def _check_survivors(secagg: SecAggRound, count: int, what: str) -> None:
    if count < secagg.min_survivors:
        raise RoundAborted(f"{count} clients {what}, the minimum is {secagg.min_survivors}")


def _queue_unmask(round_id: int) -> None:
    from jobs import tasks

    transaction.on_commit(lambda: tasks.secagg_unmask.delay(round_id))


@transaction.atomic
def secagg_phase_close(*, round_id: int, phase: str, now: Any = None) -> str:
    """Close ``phase`` of a secure round at its deadline (the scheduled task and the sweeper
    both call this; a phase already closed, or not yet due, is left alone); the phase after."""
    now = now or timezone.now()
    round_ = Round.objects.unscoped().select_for_update().get(pk=round_id)
    secagg = SecAggRound.objects.unscoped().select_for_update().get(round=round_)
    if secagg.phase != phase or phase not in WAITING_PHASES:
        return secagg.phase
    job = Job.objects.unscoped().select_related("fl_config", "tenant").get(pk=round_.job_id)
    if round_.status != RoundStatus.OPEN:  # the round ended another way (its own deadline)
        secagg.phase, secagg.abort_reason = SecAggPhase.ABORTED, f"round {round_.status}"
        secagg.save(update_fields=["phase", "abort_reason"])
        return secagg.phase
    if secagg.phase_deadline > now:
        return secagg.phase
    phase_close_locked(round_=round_, secagg=secagg, job=job, now=now)
    return secagg.phase


def secagg_abort_locked(
    *, round_: Round, secagg: SecAggRound, job: Job, reason: str, now: Any
) -> None:
    """End a secure round without a result: the round fails with the reason (no version, no
    charge), every participant is told, stored masked inputs go, the next round opens."""
    from jobs.services import fl_rounds
    from jobs.services.fl_privacy import fl_privacy_record
    from jobs.services.fl_secagg_fold import secagg_storage_release

    secagg.phase, secagg.abort_reason = SecAggPhase.ABORTED, reason[:300]
    secagg.save(update_fields=["phase", "abort_reason"])
    secagg_storage_release(secagg=secagg, round_=round_)
    fl_rounds._fail(round_, job, now)  # noqa: SLF001 - the one way a round fails
    round_.metrics = {**round_.metrics, "reason": "secure_aggregation", "detail": reason[:300]}
    round_.save(update_fields=["metrics"])
    everyone = sorted(int(c) for c in secagg.clients)
    _send(secagg, everyone, "secagg_abort", lambda c: {"reason": reason[:300]})
    fl_privacy_record(round=round_)
    if job.status == JobStatus.RUNNING:
        fl_rounds.round_open(job=job)


def secagg_sweep(*, now: Any = None) -> int:
    """Close secure-round phases past their deadline (the scheduled tasks' backstop) and
    re-queue unmasking that a killed Celery worker lost; the rounds acted on."""
    from jobs import tasks

    now = now or timezone.now()
    acted = 0
    due = SecAggRound.objects.unscoped().filter(phase_deadline__lte=now)
    for round_id, phase in due.values_list("round_id", "phase"):
        if phase in WAITING_PHASES:
            if secagg_phase_close(round_id=round_id, phase=phase, now=now) != phase:
                acted += 1
        elif phase == SecAggPhase.UNMASKING:
            tasks.secagg_unmask.delay(round_id)
            acted += 1
    return acted
