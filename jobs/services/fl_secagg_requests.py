"""The server's phase requests of a secure round, built one way for the phase close that first
sends them (``fl_secagg_phases``) and for the re-send to a client that reconnected mid-phase.

A phase's request to client c is a function of the round's fixed sets and stored messages only:
the keys of c's neighbours that advertised (``secagg_keys``), the share ciphertexts addressed to
c by its neighbours that shared (``secagg_ciphertexts``), and which of its neighbours are alive
or dropped (``secagg_unmask``). So the request rebuilt from PostgreSQL after a reconnect is the
one the close sent, byte for byte, and a client that already answered it can answer it again.
"""

from __future__ import annotations

from typing import Any

from ccgsc_worker.secagg.wire import b64encode
from jobs.models import Job
from jobs.secagg_models import SecAggMessage, SecAggPhase, SecAggPhaseSet, SecAggRound
from jobs.services.fl_secagg_state import (
    messages_of,
    phase_members,
    round_config,
    split_shares_payload,
)

# The phase a round is in → the request that opened it (the advertise phase opens with the
# invite, which the invite re-send covers).
REQUEST_OF_PHASE = {
    SecAggPhase.SHARE: "secagg_keys",
    SecAggPhase.MASKED_INPUT: "secagg_ciphertexts",
    SecAggPhase.UNMASK: "secagg_unmask",
}


def keys_fields(neighbour_keys: dict[int, dict[str, bytes]]) -> dict[str, Any]:
    """``secagg_keys`` fields: neighbour → its two public keys."""
    return {
        "keys": [
            {
                "client": client,
                "cipher_public": b64encode(pair["cipher_public"]),
                "mask_public": b64encode(pair["mask_public"]),
            }
            for client, pair in sorted(neighbour_keys.items())
        ]
    }


def ciphertexts_fields(addressed: dict[int, bytes]) -> dict[str, Any]:
    """``secagg_ciphertexts`` fields: sender → the ciphertext it addressed to this client."""
    return {
        "ciphertexts": [
            {"client": sender, "ciphertext": b64encode(ciphertext)}
            for sender, ciphertext in sorted(addressed.items())
        ]
    }


def unmask_fields(
    *, client: int, neighbours: set[int], alive: set[int], dropped: set[int]
) -> dict[str, Any]:
    """``secagg_unmask`` fields: the client's alive neighbours (and itself) and dropped ones."""
    return {
        "alive": sorted((neighbours | {client}) & alive),
        "dropped": sorted(neighbours & dropped),
    }


def phase_request(*, secagg: SecAggRound, job: Job, client: int) -> dict[str, Any] | None:
    """The current phase's request to ``client`` as the phase's close sent it, or None when
    the client has nothing to answer in this phase: it is not in the phase's set, it already
    answered, or the phase is not one a request opens."""
    phase = secagg.phase
    if phase not in REQUEST_OF_PHASE:
        return None
    neighbours = set(round_config(secagg=secagg, job=job).graph()[client])
    if phase == SecAggPhase.MASKED_INPUT:
        shared = set(phase_members(secagg=secagg, phase=SecAggPhase.SHARE))
        if client not in shared or client in {int(c) for c in secagg.masked_from}:
            return None
        relayed = messages_of(secagg=secagg, phase=SecAggPhase.SHARE)
        addressed = {
            sender: split_shares_payload(relayed[sender])[client]
            for sender in sorted(neighbours & shared)
        }
        return ciphertexts_fields(addressed)
    answered = SecAggMessage.objects.unscoped().filter(
        secagg_round=secagg, phase=phase, client=client
    )
    if answered.exists():
        return None
    if phase == SecAggPhase.SHARE:
        advertised = set(phase_members(secagg=secagg, phase=SecAggPhase.ADVERTISE))
        if client not in advertised:
            return None
        keys = messages_of(secagg=secagg, phase=SecAggPhase.ADVERTISE)
        return keys_fields(
            {
                j: {"cipher_public": keys[j][:32], "mask_public": keys[j][32:]}
                for j in neighbours & advertised
            }
        )
    fixed = SecAggPhaseSet.objects.unscoped().get(
        secagg_round=secagg, phase=SecAggPhase.MASKED_INPUT
    )
    alive, dropped = set(fixed.members), set(fixed.dropped)
    if client not in alive:
        return None
    return unmask_fields(client=client, neighbours=neighbours, alive=alive, dropped=dropped)


def secagg_requests_pending_unscoped(*, worker_id: Any) -> list[dict[str, Any]]:
    """The ``worker.secagg`` events of the phase requests this worker has not answered, one per
    secure round it is in and whose current phase waits for it (the consumer sends them again
    when the worker reconnects: the close sent them to a socket that was gone). Sync rounds and
    async groups alike; read-only."""
    from jobs.fl_models import Participation, RoundStatus

    participations = (
        Participation.objects.unscoped()
        .filter(
            worker_id=worker_id,
            round__status=RoundStatus.OPEN,
            round__secagg__phase__in=list(REQUEST_OF_PHASE),
        )
        .select_related("round__secagg", "round__job__fl_config")
        .order_by("pk")
    )
    events = []
    for participation in participations:
        secagg = participation.round.secagg
        client = next(
            (int(c) for c, pid in secagg.clients.items() if pid == participation.pk), None
        )
        if client is None:
            continue
        fields = phase_request(secagg=secagg, job=participation.round.job, client=client)
        if fields is None:
            continue
        events.append(
            {
                "type": "worker.secagg",
                "kind": REQUEST_OF_PHASE[secagg.phase],
                "fields": {
                    "participation": participation.pk,
                    "round": participation.round.number,
                    **fields,
                },
                "deadline": secagg.phase_deadline.isoformat(),
            }
        )
    return events
