"""Closing a secure round's phases: fix the set once, start the next phase or abort the round
(``fl_secagg`` has the whole story), and the sweeper that backs the phase deadlines up."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from jobs import realtime
from jobs.fl_models import Round, RoundStatus
from jobs.models import Job, JobStatus, Worker
from jobs.secagg import RoundAborted
from jobs.secagg_models import SecAggPhase, SecAggPhaseSet, SecAggRound
from jobs.services.fl_secagg_groups import group_staleness_check
from jobs.services.fl_secagg_requests import ciphertexts_fields, keys_fields, unmask_fields
from jobs.services.fl_secagg_state import (
    UNMASK_GRACE_SECONDS,
    WAITING_PHASES,
    phase_seconds,
    server_for,
)


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
    schedule_close(secagg)


def schedule_close(secagg: SecAggRound) -> None:
    from jobs import tasks  # the task module imports the services

    """Close the current phase at its deadline: a Celery task scheduled after commit."""
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
            _send(secagg, sorted(keys), "secagg_keys", lambda c: keys_fields(keys[c]))
        elif phase == SecAggPhase.SHARE:
            relayed = server.close_share()
            _check_survivors(secagg, len(relayed), "shared keys")
            _fix(secagg, phase, list(relayed), [])
            _advance(secagg, SecAggPhase.MASKED_INPUT, config.round_deadline_seconds, now)
            _send(
                secagg,
                sorted(relayed),
                "secagg_ciphertexts",
                lambda c: ciphertexts_fields(relayed[c]),
            )
        elif phase == SecAggPhase.MASKED_INPUT:
            group_staleness_check(round_=round_, job=job)  # async groups: before unmasking
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
                lambda c: unmask_fields(
                    client=c, neighbours=graph[c], alive=alive, dropped=dropped
                ),
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
    from jobs.services import fl_rounds, fl_rounds_end
    from jobs.services.fl_privacy import fl_privacy_record
    from jobs.services.fl_secagg_fold import secagg_storage_release

    secagg.phase, secagg.abort_reason = SecAggPhase.ABORTED, reason[:300]
    secagg.save(update_fields=["phase", "abort_reason"])
    secagg_storage_release(secagg=secagg, round_=round_)
    fl_rounds_end.round_fail(round_, job, now)
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
