"""A secure round's state as the services read it back from PostgreSQL: public parameters,
the fixed sets, the stored messages, and the pure server rebuilt from them (``fl_secagg``)."""

from __future__ import annotations

import struct

from jobs.fl_models import FlConfig
from jobs.models import Job
from jobs.secagg import RoundConfig, SecAggServer
from jobs.secagg import primitives as p
from jobs.secagg_models import SecAggMessage, SecAggPhase, SecAggPhaseSet, SecAggRound

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
# Stored payloads: share keys as (u32 receiver, u16 length, ciphertext)*, unmask shares as
# (u32 neighbour, 33-byte share)*.
SHARE_HEAD = struct.Struct(">IH")
ID_HEAD = struct.Struct(">I")


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


def phase_members(*, secagg: SecAggRound, phase: str) -> list[int]:
    """The fixed set of a closed phase ([] when it has not closed)."""
    row = SecAggPhaseSet.objects.unscoped().filter(secagg_round=secagg, phase=phase).first()
    return list(row.members) if row else []


def messages_of(*, secagg: SecAggRound, phase: str) -> dict[int, bytes]:
    """Client → stored payload of one phase."""
    rows = SecAggMessage.objects.unscoped().filter(secagg_round=secagg, phase=phase)
    return {row.client: bytes(row.payload) for row in rows}


def split_shares_payload(payload: bytes) -> dict[int, bytes]:
    """A stored share-keys payload → receiver → ciphertext."""
    out, offset = {}, 0
    while offset < len(payload):
        receiver, length = SHARE_HEAD.unpack_from(payload, offset)
        offset += SHARE_HEAD.size
        out[receiver] = payload[offset : offset + length]
        offset += length
    return out


def split_unmask_payload(payload: bytes) -> dict[int, bytes]:
    """A stored unmask payload → neighbour → 33-byte share."""
    step = ID_HEAD.size + p.SHARE_BYTES
    return {
        ID_HEAD.unpack_from(payload, i)[0]: payload[i + ID_HEAD.size : i + step]
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
