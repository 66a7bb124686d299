"""The worker session as a pure state machine: no I/O, no clock, no asyncio.

``Session`` takes one input at a time (the socket opened or closed, a server message, a task
finished or failed, a heartbeat tick, pause/resume, a change of concurrency, stop) and returns
the effects the client must carry out, in order, as plain dicts:

- ``{"do": "send", "message": {...}}``: send a JSON control message;
- ``{"do": "send_result", "assignment": id}``: send the result frame the outbox holds;
- ``{"do": "run", "assignment": id}`` / ``{"do": "cancel", "assignment": id}``: start or abandon a
  task (``session.assignment(id)`` gives the decoded assignment);
- ``{"do": "connect", "delay_ms": n}``: open the socket after ``n`` ms (the back-off schedule);
- ``{"do": "heartbeat", "interval_ms": n | None}``: tick every ``n`` ms from now on (None stops);
- ``{"do": "close", "code": 1000}``: close the socket;
- ``{"do": "end", "reason": ..., "code": n | None}``: the session is over (``requested``, or a
  fatal close code after which reconnecting cannot help);
- ``{"do": "notify", "event": name, ...}``: something happened (logs, counters on screen);
- ``{"do": "train", "invite": {...}}``: train one FL round (the parsed ``round_invite``) and
  upload the update; the driver reports the end with ``round_finished`` (the browser's session
  emits the same effect and its page trains with ``training.js``).
- ``{"do": "secagg", "message": {...}}``: a secure round's phase message, for the driver's
  secure-round client (``secure_rounds``; edge worker only).

What each server message does is in ``session_messages``. The twins are
``static/worker_frontend/session.js`` and ``session-messages.js``;
``tests/scenarios/worker_session.json`` drives both with the same inputs and expects the same
effects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ccgsc_worker import protocol as proto
from ccgsc_worker.backoff import Backoff
from ccgsc_worker.outbox import Outbox
from ccgsc_worker.protocol import Assignment
from ccgsc_worker.session_messages import (
    CONNECTED,
    QUEUED,
    RUNNING,
    SERVER_MESSAGES,
    Effect,
    notify,
    refuse_assign,
    send,
)

HelloBuilder = Callable[[int, "str | None"], dict[str, Any]]

IDLE = "idle"  # not started, or left
CONNECTING = "connecting"  # waiting for the socket to open (after the back-off delay)
HELLO = "hello"  # hello sent, waiting for welcome (then CONNECTED)
STOPPED = "stopped"  # the server refused us for good (4001, 4002)

DEFAULT_HEARTBEAT_MS = 10_000
STOPPING = "stopping"  # the pause reason a graceful stop adds


@dataclass
class SessionCounters:
    """What a session has done since it was created (the same names in session.js)."""

    tasks_completed: int = 0
    errors: int = 0
    results_acked: int = 0
    results_resent: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    validated: int = 0
    work_units: int = 0
    cancelled: int = 0
    server_errors: int = 0
    sessions: int = 0
    disconnects: int = 0
    reconnects: int = 0


class Session:
    """One worker's protocol state: connection phase, held tasks, outbox, pause and counters."""

    def __init__(
        self,
        *,
        concurrency: int,
        build_hello: HelloBuilder,
        backoff: Backoff | None = None,
        outbox: Outbox | None = None,
        worker_id: str | None = None,
        heartbeat_floor_ms: int = 50,
        heartbeat_override_ms: int | None = None,
    ) -> None:
        self.phase = IDLE
        self.concurrency = concurrency
        self.worker_id = worker_id
        self.contributor: str | None = None
        self.heartbeat_ms = DEFAULT_HEARTBEAT_MS
        self.max_result_bytes = proto.MAX_RESULT_BYTES
        self.pause_reasons: set[str] = set()
        self.stopping = False
        self.sent_slots: int | None = None
        self.outbox = outbox if outbox is not None else Outbox()
        self.backoff = backoff or Backoff()
        self.counters = SessionCounters()
        self._build_hello = build_hello
        self._heartbeat_floor_ms = heartbeat_floor_ms
        self._heartbeat_override_ms = heartbeat_override_ms
        self._tasks: dict[str, str] = {}  # assignment id -> queued | running, in arrival order
        self._assignments: dict[str, Assignment] = {}
        self._rounds: set[int] = set()  # participations being trained

    # -- reading ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between a ``welcome`` and the end of that connection."""
        return self.phase == CONNECTED

    @property
    def desired_slots(self) -> int:
        """The capacity to advertise: 0 while anything pauses the worker."""
        return 0 if self.pause_reasons else self.concurrency

    @property
    def tasks(self) -> dict[str, str]:
        """Held assignments mapped to ``queued`` or ``running``."""
        return dict(self._tasks)

    def assignment(self, assignment_id: str) -> Assignment:
        """The decoded assignment of a held task."""
        return self._assignments[assignment_id]

    def task_state(self, assignment_id: str) -> str | None:
        """``queued``, ``running``, or None when the task is not held."""
        return self._tasks.get(assignment_id)

    def hold(self, assignment: Assignment) -> None:
        """Keep a new assignment, queued until ``pump`` starts it."""
        self._tasks[assignment.id] = QUEUED
        self._assignments[assignment.id] = assignment

    def release(self, assignment_id: str) -> str | None:
        """Forget a held task; return the state it was in (None when it was not held)."""
        self._assignments.pop(assignment_id, None)
        return self._tasks.pop(assignment_id, None)

    @property
    def rounds(self) -> list[int]:
        """Participations being trained, in id order."""
        return sorted(self._rounds)

    def begin_round(self, participation: int) -> bool:
        """Start training ``participation``; False when it is already being trained."""
        if participation in self._rounds:
            return False
        self._rounds.add(participation)
        return True

    def round_finished(self, participation: int, outcome: str, message: str = "") -> list[Effect]:
        """A round's training and upload ended (``uploaded``, ``rejected``, ``late``, an error
        code, or a decline reason such as ``no_local_data``): forget it and say so; a decline
        reason is also sent to the server as ``round_declined`` (not a dropout, then)."""
        if participation not in self._rounds:
            return []
        self._rounds.discard(participation)
        note = notify(
            "round_finished", participation=participation, outcome=outcome, message=message
        )
        effects = [note]
        if outcome in proto.DECLINE_REASONS and self.connected:
            effects.append(send(proto.round_declined(participation, outcome, message)))
        return [*effects, *self.end_stop_if_done()]

    @property
    def heartbeat_interval_ms(self) -> int:
        """How often to heartbeat: half the lease period, never below the client's floor."""
        period_ms = self._heartbeat_override_ms or self.heartbeat_ms
        return max(self._heartbeat_floor_ms, period_ms // 2)

    def snapshot(self) -> dict[str, Any]:
        """The state the scenario table checks (the same keys in session.js)."""
        return {
            "phase": self.phase,
            "worker": self.worker_id,
            "contributor": self.contributor,
            "heartbeat_ms": self.heartbeat_ms,
            "concurrency": self.concurrency,
            "slots": self.desired_slots,
            "paused": sorted(self.pause_reasons),
            "stopping": self.stopping,
            "tasks": self.tasks,
            "outbox": list(self.outbox),
            "rounds": self.rounds,
            "counters": asdict(self.counters),
        }

    # -- inputs ----------------------------------------------------------------------------

    def handle(self, event: Mapping[str, Any]) -> list[Effect]:
        """Dispatch one input written as a dict (the scenario table's form)."""
        handler = _INPUTS.get(event["event"])
        if handler is None:
            raise ValueError(f"unknown session input {event['event']!r}")
        return handler(self, event)

    def start(self) -> list[Effect]:
        """Begin contributing: connect now."""
        if self.phase != IDLE:
            return []
        self.phase = CONNECTING
        self.stopping = False
        self.pause_reasons.discard(STOPPING)
        return [{"do": "connect", "delay_ms": 0}]

    def opened(self) -> list[Effect]:
        """The socket is open: say hello (resuming the previous identity, if any)."""
        if self.phase != CONNECTING:
            return []
        self.phase = HELLO
        self.sent_slots = self.desired_slots
        return [send(self._build_hello(self.sent_slots, self.worker_id))]

    def message(self, data: str | bytes) -> list[Effect]:
        """One frame from the server."""
        if isinstance(data, bytes | bytearray | memoryview):
            return [notify("bad_message", error="unexpected binary frame from the server")]
        try:
            message = proto.parse_server_message(data)
            return SERVER_MESSAGES[message["type"]](self, message)
        except proto.ProtocolError as exc:
            raw = _lenient_json(data)
            if raw.get("type") == "assign" and raw.get("v") == proto.PROTOCOL_VERSION:
                return refuse_assign(self, raw, str(exc))
            return [notify("bad_message", error=str(exc)[:300])]
        except (KeyError, TypeError, ValueError) as exc:
            return [notify("bad_message", error=str(exc)[:300])]

    def closed(self, code: int | None, reason: str = "") -> list[Effect]:
        """The socket closed (or never opened: ``code`` None)."""
        if self.phase in (IDLE, STOPPED):
            return []
        effects: list[Effect] = []
        if self.phase == CONNECTED:
            self.counters.disconnects += 1
            effects += [{"do": "heartbeat", "interval_ms": None}, notify("disconnected")]
        self.sent_slots = None
        if code in proto.FATAL_CLOSE_CODES:
            effects += self._abandon()
            self.phase = STOPPED
            reason_name = "unauthorized" if code == proto.CLOSE_UNAUTHORIZED else "protocol_version"
            return [*effects, {"do": "end", "reason": reason_name, "code": code}]
        if self.stopping:  # the connection went while finishing: nothing left to wait for
            effects += self._abandon()
            self.phase = IDLE
            self.stopping = False
            return [*effects, {"do": "end", "reason": "requested", "code": None}]
        self.phase = CONNECTING
        self.counters.reconnects += 1
        # Rounded half up like JavaScript's Math.round, so both clients agree to the millisecond.
        delay_ms = math.floor(self.backoff.next_delay() * 1000 + 0.5)
        return [
            *effects,
            notify("reconnecting", delay_ms=delay_ms, code=code, reason=reason),
            {"do": "connect", "delay_ms": delay_ms},
        ]

    def finished(self, assignment_id: str, output: bytes, elapsed_ms: int = 0) -> list[Effect]:
        """A task produced its output: keep the frame until acked and send it when connected."""
        if self.release(assignment_id) is None:
            return [notify("discarded", assignment=assignment_id)]
        if len(output) > self.max_result_bytes:
            limit = self.max_result_bytes
            text = f"output of {len(output)} bytes exceeds the {limit}-byte result limit"
            return self._failed(assignment_id, "kernel_failed", text)
        frame = proto.encode_result_frame(assignment_id, output, elapsed_ms)
        effects = [
            notify("outbox_overflow", assignment=lost)
            for lost in self.outbox.put(assignment_id, frame)
        ]
        self.counters.tasks_completed += 1
        effects.append(notify("completed", assignment=assignment_id, elapsed_ms=elapsed_ms))
        if self.connected:
            effects.append({"do": "send_result", "assignment": assignment_id})
        return effects + self.pump() + self.end_stop_if_done()

    def failed(self, assignment_id: str, code: str, message: str = "") -> list[Effect]:
        """A task failed on this worker: report it so the server reissues the replica."""
        if self.release(assignment_id) is None:
            return []
        return self._failed(assignment_id, code, message)

    def tick(self) -> list[Effect]:
        """Heartbeat: a ``progress`` for every held task (queued ones hold a lease as well)."""
        if not self.connected:
            return []
        return [send(proto.progress(aid)) for aid in self._tasks]

    def pause(self, reason: str) -> list[Effect]:
        """Take no new work for ``reason`` (user, battery, metered, stopping)."""
        self.pause_reasons.add(reason)
        return self.sync_capacity()

    def resume(self, reason: str) -> list[Effect]:
        """Lift one pause reason; work resumes when none is left."""
        self.pause_reasons.discard(reason)
        return self.sync_capacity()

    def set_concurrency(self, concurrency: int) -> list[Effect]:
        """Run up to ``concurrency`` tasks at once, and advertise it."""
        if not 1 <= concurrency <= proto.MAX_SLOTS:
            raise ValueError(f"concurrency must be in 1..{proto.MAX_SLOTS}, got {concurrency}")
        self.concurrency = concurrency
        return self.sync_capacity() + self.pump()

    def stop(self, *, abandon: bool = False) -> list[Effect]:
        """Leave. Gracefully (connected, not ``abandon``): take no new work, drop queued tasks,
        finish running ones, deliver their results and end once the outbox is empty."""
        if self.phase in (IDLE, STOPPED):
            return []
        if abandon or not self.connected:
            effects = self._abandon()
            if self.phase in (CONNECTING, HELLO, CONNECTED):
                effects.append({"do": "close", "code": 1000})
            if self.phase == CONNECTED:
                effects.append({"do": "heartbeat", "interval_ms": None})
            self.phase = IDLE
            self.sent_slots = None
            self.stopping = False
            return [*effects, {"do": "end", "reason": "requested", "code": None}]
        self.stopping = True
        effects = self.pause(STOPPING)
        for aid, state in list(self._tasks.items()):
            if state == QUEUED:
                effects += self.drop(aid, "stopping")
        return effects + self.end_stop_if_done()

    # -- internals -------------------------------------------------------------------------

    def _failed(self, assignment_id: str, code: str, message: str) -> list[Effect]:
        self.counters.errors += 1
        effects = [notify("failed", assignment=assignment_id, code=code, message=message)]
        if self.connected:
            effects.append(send(proto.error(assignment_id, code, message)))
        return effects + self.pump() + self.end_stop_if_done()

    def pump(self) -> list[Effect]:
        """Start queued tasks, oldest first, while fewer than ``concurrency`` run."""
        running = sum(1 for state in self._tasks.values() if state == RUNNING)
        effects: list[Effect] = []
        for aid, state in self._tasks.items():
            if running >= self.concurrency:
                break
            if state == QUEUED:
                self._tasks[aid] = RUNNING
                running += 1
                effects.append({"do": "run", "assignment": aid})
        return effects

    def drop(self, aid: str, reason: str) -> list[Effect]:
        """Forget a held task without running it."""
        self.release(aid)
        return [notify("dropped", assignment=aid, reason=reason)]

    def _abandon(self) -> list[Effect]:
        """Forget every held task; running ones are cancelled."""
        effects = [
            {"do": "cancel", "assignment": aid}
            for aid, state in self._tasks.items()
            if state == RUNNING
        ]
        self._tasks.clear()
        self._assignments.clear()
        return effects

    def sync_capacity(self) -> list[Effect]:
        """Advertise the capacity when it differs from what the server was last told."""
        wanted = self.desired_slots
        if not self.connected or wanted == self.sent_slots:
            return []
        self.sent_slots = wanted
        return [send(proto.capacity(wanted))]

    def end_stop_if_done(self) -> list[Effect]:
        """During a graceful stop, end once nothing is held, every result is acknowledged and
        no FL round is still training or uploading."""
        if not self.stopping or self._tasks or len(self.outbox) or self._rounds:
            return []
        self.stopping = False
        self.phase = IDLE
        self.sent_slots = None
        return [
            {"do": "heartbeat", "interval_ms": None},
            {"do": "close", "code": 1000},
            {"do": "end", "reason": "requested", "code": None},
        ]


_INPUTS: dict[str, Callable[[Session, Mapping[str, Any]], list[Effect]]] = {
    "start": lambda s, e: s.start(),
    "opened": lambda s, e: s.opened(),
    "message": lambda s, e: s.message(e["data"]),
    "closed": lambda s, e: s.closed(e.get("code"), e.get("reason", "")),
    "finished": lambda s, e: s.finished(e["assignment"], e["output"], e.get("elapsed_ms", 0)),
    "failed": lambda s, e: s.failed(e["assignment"], e["code"], e.get("message", "")),
    "tick": lambda s, e: s.tick(),
    "pause": lambda s, e: s.pause(e["reason"]),
    "resume": lambda s, e: s.resume(e["reason"]),
    "concurrency": lambda s, e: s.set_concurrency(e["concurrency"]),
    "stop": lambda s, e: s.stop(abandon=bool(e.get("abandon", False))),
    "round_finished": lambda s, e: s.round_finished(
        e["participation"], e["outcome"], e.get("message", "")
    ),
}


def _lenient_json(data: str | bytes) -> dict[str, Any]:
    """The frame as a JSON object when it is one (to answer a malformed ``assign``), else {}."""
    try:
        raw = json.loads(data)
    except (TypeError, ValueError, RecursionError):
        return {}
    return raw if isinstance(raw, dict) else {}
