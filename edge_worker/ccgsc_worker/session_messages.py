"""What each server message does to a worker session (twin: ``session-messages.js``).

One function per message type, called by ``Session.message`` with the parsed message; each
returns the session's effects, and raises ``ValueError`` on a malformed message (the session
turns that into a ``bad_message`` notification). Also the small vocabulary both modules share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ccgsc_worker import protocol as proto

if TYPE_CHECKING:
    from ccgsc_worker.session import Session

Effect = dict[str, Any]

QUEUED = "queued"
RUNNING = "running"
CONNECTED = "connected"
MIN_HEARTBEAT_MS = 100


def notify(event: str, **info: Any) -> Effect:
    """A notification effect: something happened that logs or counters on screen may show."""
    return {"do": "notify", "event": event, **info}


def send(message: dict[str, Any]) -> Effect:
    """A send effect for one JSON control message."""
    return {"do": "send", "message": message}


def count(value: Any) -> int | None:
    """A non-negative integer count, also from a decimal string (u64 may travel as text)."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def welcome(session: Session, message: dict[str, Any]) -> list[Effect]:
    """Connected: keep the identity and limits, drop what the server no longer expects, re-send
    unacknowledged results, heartbeat every held task and start the heartbeat timer."""
    worker, heartbeat_ms = message["worker"], message["heartbeat_ms"]
    if not isinstance(worker, str) or not worker:
        raise ValueError("welcome: worker must be a string")
    if isinstance(heartbeat_ms, bool) or not isinstance(heartbeat_ms, int | float):
        raise ValueError("welcome: heartbeat_ms must be a number")
    resumed = worker == session.worker_id
    session.worker_id = worker
    contributor = message.get("contributor")
    session.contributor = contributor if isinstance(contributor, str) else None
    session.heartbeat_ms = max(MIN_HEARTBEAT_MS, int(heartbeat_ms))
    limits = message.get("limits")
    max_result_bytes = count(limits.get("max_result_bytes")) if isinstance(limits, dict) else None
    if max_result_bytes is not None:
        session.max_result_bytes = min(proto.MAX_RESULT_BYTES, max_result_bytes)
    session.phase = CONNECTED
    session.backoff.reset()
    session.counters.sessions += 1
    effects: list[Effect] = []
    outstanding = message.get("outstanding")
    if isinstance(outstanding, list):
        expected = {a for a in outstanding if isinstance(a, str)}
        for aid, state in session.tasks.items():
            if state == QUEUED and aid not in expected:
                effects += session.drop(aid, "not_outstanding")
    effects.append(
        notify(
            "welcome",
            worker=worker,
            contributor=session.contributor,
            resumed=resumed,
            heartbeat_ms=session.heartbeat_ms,
            resending=len(session.outbox),
            limits=limits if isinstance(limits, dict) else None,
        )
    )
    effects += session.sync_capacity()
    for aid in session.outbox:
        session.counters.results_resent += 1
        effects.append({"do": "send_result", "assignment": aid})
    effects += session.tick()
    effects.append({"do": "heartbeat", "interval_ms": session.heartbeat_interval_ms})
    return effects


def refuse_assign(session: Session, message: Mapping[str, Any], error: str) -> list[Effect]:
    """An ``assign`` we cannot run: say so at once so the server can hand the task to another
    worker (whether its schema or its decoding failed)."""
    aid = message.get("assignment")
    effects = [notify("bad_message", error=error[:300])]
    if isinstance(aid, str) and aid and session.task_state(aid) is None and session.connected:
        effects.append(send(proto.error(aid, "kernel_rejected", error)))
    return effects


def assign(session: Session, message: dict[str, Any]) -> list[Effect]:
    """Hold a new task (it runs when a slot is free); refuse one that cannot be decoded."""
    try:
        assignment = proto.decode_assign(message)
    except proto.ProtocolError as exc:
        return refuse_assign(session, message, str(exc))
    aid = assignment.id
    if session.task_state(aid) is not None:
        return []
    if aid in session.outbox:  # assigned again after we finished it: the result answers it
        return [{"do": "send_result", "assignment": aid}] if session.connected else []
    if session.stopping:
        return [notify("dropped", assignment=aid, reason="stopping")]
    session.hold(assignment)
    return [notify("assign", assignment=aid), *session.pump()]


def ack(session: Session, message: dict[str, Any]) -> list[Effect]:
    """The server stored a result (whatever the status): stop keeping it."""
    aid, status = message["assignment"], message["status"]
    if not isinstance(aid, str) or status not in proto.ACK_STATUSES:
        raise ValueError("ack: bad assignment or status")
    if not session.outbox.ack(aid):
        return []
    session.counters.results_acked += 1
    session.counters.acks[status] = session.counters.acks.get(status, 0) + 1
    return [notify("ack", assignment=aid, status=status), *session.end_stop_if_done()]


def credit(session: Session, message: dict[str, Any]) -> list[Effect]:
    """Replicas of this worker validated: add them up."""
    validated, work_units = count(message["validated"]), count(message["work_units"])
    if validated is None or work_units is None:
        raise ValueError("credit: validated and work_units must be non-negative integers")
    session.counters.validated += validated
    session.counters.work_units += work_units
    return [notify("credit", validated=validated, work_units=work_units)]


def cancel(session: Session, message: dict[str, Any]) -> list[Effect]:
    """Stop working on a task: drop it if queued, abandon it if running (its slot frees)."""
    aid = message["assignment"]
    state = session.task_state(aid) if isinstance(aid, str) else None
    if state is None:
        return []
    session.counters.cancelled += 1
    effects = [notify("cancel", assignment=aid, state=state, reason=message.get("reason"))]
    if state == QUEUED:
        return effects + session.drop(aid, "cancelled")
    session.release(aid)
    return [*effects, {"do": "cancel", "assignment": aid}, *session.pump()]


def error(session: Session, message: dict[str, Any]) -> list[Effect]:
    """The server refused something we sent: count it and say so; nothing else changes."""
    session.counters.server_errors += 1
    return [
        notify(
            "server_error",
            code=message.get("code"),
            message=message.get("message"),
            ref=message.get("ref"),
        )
    ]


def pong(session: Session, message: dict[str, Any]) -> list[Effect]:
    """The answer to a ping: nothing to do."""
    return []


def round_invite(session: Session, message: dict[str, Any]) -> list[Effect]:
    """An FL round invitation: train it (the driver fetches, trains and uploads off the loop)
    unless this participation is already being trained (a re-sent invite: nothing to do) or the
    worker is paused or stopping (then it declines, so the round does not wait for it)."""
    participation = message["participation"]
    info = {"job": message["job"], "round": message["round"], "participation": participation}
    if participation in session.rounds:
        return []
    if session.pause_reasons:
        return decline_round(session, info, "paused", ",".join(sorted(session.pause_reasons)))
    session.begin_round(participation)
    return [notify("round_invite", **info), {"do": "train", "invite": message}]


def decline_round(
    session: Session, info: dict[str, Any], reason: str, message: str = ""
) -> list[Effect]:
    """Say (and tell the server, when connected) that this worker will not train a round."""
    effects = [notify("round_declined", **info, reason=reason)]
    if session.connected:
        effects.append(send(proto.round_declined(info["participation"], reason, message)))
    return effects


def secagg(session: Session, message: dict[str, Any]) -> list[Effect]:
    """A secure round's phase message: the driver's secure-round client answers it."""
    return [{"do": "secagg", "message": message}]


SERVER_MESSAGES: dict[str, Callable[[Session, dict[str, Any]], list[Effect]]] = {
    "welcome": welcome,
    "assign": assign,
    "ack": ack,
    "credit": credit,
    "cancel": cancel,
    "error": error,
    "pong": pong,
    "round_invite": round_invite,
    "secagg_keys": secagg,
    "secagg_ciphertexts": secagg,
    "secagg_unmask": secagg,
    "secagg_abort": secagg,
}
