"""The server's phase requests of a secure round, built one way for the phase close that first
sends them (``fl_secagg_phases``) and for the re-send to a client that reconnected mid-phase.

A phase's request to client c is a function of the round's fixed sets and stored messages only:
the keys of c's neighbours that advertised (``secagg_keys``), the share ciphertexts addressed to
c by its neighbours that shared (``secagg_ciphertexts``), and which of its neighbours are alive
or dropped (``secagg_unmask``). So the request rebuilt from PostgreSQL after a reconnect is the
one the close sent, byte for byte, and a client that already answered it can answer it again.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Exists

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


def phase_requests(
    *, secagg: SecAggRound, job: Job, clients: set[int]
) -> dict[int, dict[str, Any]]:
    """Client → the current phase's request to it as the phase's close sent it, for those of
    ``clients`` that have something to answer in this phase (a client absent from the result is
    not in the phase's set, already answered, or the phase is not one a request opens). A few
    reads of the round's stored state, however many clients ask."""
    phase = secagg.phase
    if phase not in REQUEST_OF_PHASE or not clients:
        return {}
    graph = round_config(secagg=secagg, job=job).graph()
    if phase == SecAggPhase.MASKED_INPUT:
        shared = set(phase_members(secagg=secagg, phase=SecAggPhase.SHARE))
        waiting = (clients & shared) - {int(c) for c in secagg.masked_from}
        if not waiting:
            return {}
        relayed = messages_of(secagg=secagg, phase=SecAggPhase.SHARE)
        return {
            client: ciphertexts_fields(
                {
                    sender: split_shares_payload(relayed[sender])[client]
                    for sender in sorted(set(graph[client]) & shared)
                }
            )
            for client in sorted(waiting)
        }
    answered = set(
        SecAggMessage.objects.unscoped()
        .filter(secagg_round=secagg, phase=phase, client__in=clients)
        .values_list("client", flat=True)
    )
    waiting = clients - answered
    if not waiting:
        return {}
    if phase == SecAggPhase.SHARE:
        advertised = set(phase_members(secagg=secagg, phase=SecAggPhase.ADVERTISE))
        waiting &= advertised
        if not waiting:
            return {}
        keys = messages_of(secagg=secagg, phase=SecAggPhase.ADVERTISE)
        return {
            client: keys_fields(
                {
                    j: {"cipher_public": keys[j][:32], "mask_public": keys[j][32:]}
                    for j in set(graph[client]) & advertised
                }
            )
            for client in sorted(waiting)
        }
    fixed = SecAggPhaseSet.objects.unscoped().get(
        secagg_round=secagg, phase=SecAggPhase.MASKED_INPUT
    )
    alive, dropped = set(fixed.members), set(fixed.dropped)
    return {
        client: unmask_fields(
            client=client, neighbours=set(graph[client]), alive=alive, dropped=dropped
        )
        for client in sorted(waiting & alive)
    }


def secagg_requests_pending_unscoped(*, worker_id: Any) -> list[dict[str, Any]]:
    """The ``worker.secagg`` events of the phase requests this worker has not answered, one per
    secure round it is in and whose current phase waits for it (sent again when the worker
    reconnects: the close sent them to a socket that was gone). Sync rounds and async groups
    alike; read-only."""
    key = uuid.UUID(str(worker_id))
    return secagg_requests_pending_by_worker_unscoped(worker_ids=[key]).get(key, [])


def secagg_requests_pending_by_worker_unscoped(
    *, worker_ids: list[Any]
) -> dict[Any, list[dict[str, Any]]]:
    """:func:`secagg_requests_pending_unscoped` for many workers (a flush of hellos): worker id
    to its events, in participation order; workers with none are absent.

    One query finds the participations of these workers in open secure rounds waiting on a
    request; it is gated on any such round existing at all (an uncorrelated ``EXISTS``, which
    PostgreSQL evaluates once and which skips the scan when no secure round is open). Each
    secure round found then costs a few reads of its stored state, shared by all its workers
    of the batch, so the cost follows the open secure rounds, not the reconnecting workers."""
    from jobs.fl_models import Participation, RoundStatus

    if not worker_ids:
        return {}
    phases = list(REQUEST_OF_PHASE)
    any_waiting = Exists(
        SecAggRound.objects.unscoped().filter(round__status=RoundStatus.OPEN, phase__in=phases)
    )
    participations = list(
        Participation.objects.unscoped()
        .filter(
            any_waiting,
            worker_id__in=worker_ids,
            round__status=RoundStatus.OPEN,
            round__secagg__phase__in=phases,
        )
        .select_related("round__secagg", "round__job__fl_config")
        .order_by("pk")
    )
    client_of: dict[int, int] = {}
    by_round: dict[int, list[Any]] = {}
    for participation in participations:
        secagg = participation.round.secagg
        client = next(
            (int(c) for c, pid in secagg.clients.items() if pid == participation.pk), None
        )
        if client is not None:
            client_of[participation.pk] = client
            by_round.setdefault(secagg.pk, []).append(participation)
    requests: dict[int, dict[int, dict[str, Any]]] = {}
    for members in by_round.values():
        round_ = members[0].round
        requests[round_.secagg.pk] = phase_requests(
            secagg=round_.secagg,
            job=round_.job,
            clients={client_of[p.pk] for p in members},
        )
    pending: dict[Any, list[dict[str, Any]]] = {}
    for participation in participations:
        secagg = participation.round.secagg
        if participation.pk not in client_of:
            continue
        fields = requests[secagg.pk].get(client_of[participation.pk])
        if fields is None:
            continue
        pending.setdefault(participation.worker_id, []).append(
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
    return pending
