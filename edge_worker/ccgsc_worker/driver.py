"""Drives a pure worker session over any transport: carries out its effects with a task pool.

``SessionDriver`` turns the session's effects into sends on the current transport, task runs in
the pool, heartbeats and ``on_event`` notifications, and feeds back what happens (messages,
finished or failed tasks, ticks). It knows nothing of sockets: ``attach`` / ``handle_message`` /
``detach`` are the seam a connection (or a test) plugs into; ``EdgeWorker`` adds the WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from ccgsc_worker import protocol as proto
from ccgsc_worker.backoff import Backoff
from ccgsc_worker.outbox import Outbox
from ccgsc_worker.pool import Heartbeat, TaskPool, error_code_for
from ccgsc_worker.protocol import Assignment, KernelRef
from ccgsc_worker.secure_rounds import SecureRounds
from ccgsc_worker.session import Effect, Session, SessionCounters
from ccgsc_worker.training import RoundError, RoundTrainer

log = logging.getLogger("ccgsc_worker")

EventHook = Callable[[str, dict[str, Any]], None]


class Transport(Protocol):
    """What the worker needs from a connection: sending one text or binary message."""

    async def send(self, message: str | bytes, /) -> None:
        """Send one WebSocket message."""


class KernelSource(Protocol):
    """Where training kernels come from (the kernel store): bytes checked against the hash."""

    async def get(self, ref: KernelRef, /) -> bytes:
        """The module bytes of ``ref``."""


class SessionDriver:
    """Carries out a session's effects on the attached transport and the task pool."""

    def __init__(
        self,
        session: Session,
        pool: TaskPool,
        on_event: EventHook | None,
        *,
        trainer: RoundTrainer | None = None,
        kernels: KernelSource | None = None,
    ) -> None:
        self.session = session
        self.pool = pool
        self.trainer = trainer
        self.kernel_source = kernels
        self._on_event = on_event
        self._transport: Transport | None = None
        self._heartbeat = Heartbeat(self._beat)
        self._held: dict[str, Assignment] = {}  # what the pool was told to run, for events
        self._ended: dict[str, Any] | None = None  # the session's "end" effect
        self._next_delay_ms = 0
        self._wake: asyncio.Event | None = None  # set when the session ends
        self._changed: asyncio.Event | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.secure_rounds = SecureRounds()

    @property
    def connected(self) -> bool:
        """True between a ``welcome`` and the end of that connection."""
        return self._transport is not None and self.session.connected

    @property
    def active(self) -> dict[str, str]:
        """Assignments held right now, mapped to ``queued`` or ``running``."""
        return self.session.tasks

    @property
    def stats(self) -> SessionCounters:
        """Counters since the worker was created."""
        return self.session.counters

    @property
    def outbox(self) -> Outbox:
        """Results kept until acknowledged."""
        return self.session.outbox

    @property
    def backoff(self) -> Backoff:
        """The reconnect schedule."""
        return self.session.backoff

    @property
    def worker_id(self) -> str | None:
        """The worker id the server gave us (kept to resume after a reconnect)."""
        return self.session.worker_id

    @property
    def contributor(self) -> str | None:
        """The contributor the worker token belongs to, once welcomed."""
        return self.session.contributor

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no assignment or FL round is queued or running; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.session.tasks or self.session.rounds or self.pool.busy:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await self._wait_changed(remaining)
        return True

    # -- transport seam -------------------------------------------------------------------

    async def attach(self, transport: Transport) -> None:
        """Start a connection on ``transport``: send ``hello`` (with ``resume`` after a welcome)."""
        self._transport = transport
        effects = self.session.start()  # only when never started: this seam may be used alone
        await self._apply([e for e in effects if e["do"] != "connect"])
        await self._apply(self.session.opened())

    async def handle_message(self, data: str | bytes) -> None:
        """Process one message from the server."""
        await self._apply(self.session.message(data))

    def detach(self) -> None:
        """Forget the current connection; running tasks go on and their results wait."""
        self._transport = None
        self._apply_now(self.session.closed(None))

    # -- effects --------------------------------------------------------------------------

    async def _apply(self, effects: Iterable[Effect]) -> None:
        """Carry out the session's effects in order."""
        for effect in effects:
            kind = effect["do"]
            if kind == "send":
                await self._send(proto.encode_text(effect["message"]))
            elif kind == "send_result":
                frame = self.outbox.get(effect["assignment"])
                if frame is not None:
                    await self._send(frame)
            else:
                self._do(effect)
        self._notify()

    def _apply_now(self, effects: Iterable[Effect]) -> None:
        """Carry out effects from synchronous code; what is to be sent goes out in a task."""
        sends = []
        for effect in effects:
            if effect["do"] in ("send", "send_result"):
                sends.append(effect)
            else:
                self._do(effect)
        if sends:
            self._spawn(self._apply(sends))
        self._notify()

    def _do(self, effect: Effect) -> None:
        kind = effect["do"]
        if kind == "run":
            assignment = self.session.assignment(effect["assignment"])
            self._held[assignment.id] = assignment
            self.pool.start(assignment, self._on_started, self._on_done)
        elif kind == "cancel":
            pass  # a kernel run cannot be interrupted safely: the pool lets it finish
        elif kind == "connect":
            self._next_delay_ms = effect["delay_ms"]
        elif kind == "heartbeat":
            self._heartbeat.set(effect["interval_ms"])
        elif kind in ("close", "end"):
            if kind == "end":
                self._ended = effect
            if self._wake is not None:
                self._wake.set()
        elif kind == "train":
            invite = effect["invite"]
            self._spawn(self._train(invite, time.monotonic() + invite["deadline_ms"] / 1000))
        elif kind == "secagg":
            self._spawn(self._secagg(effect["message"]))
        elif kind == "notify":
            self._notify_event(effect)

    def _notify_event(self, effect: Effect) -> None:
        info = {k: v for k, v in effect.items() if k not in ("do", "event")}
        name = effect["event"]
        if name == "assign":
            info["assignment"] = self.session.assignment(info["assignment"])
        elif name == "completed":
            assignment = self._held.get(info["assignment"])
            if assignment is not None:
                info["assignment"] = assignment
        elif name == "reconnecting":
            info["delay"] = info.pop("delay_ms") / 1000
        self._emit(name, **info)

    def _on_started(self, assignment: Assignment) -> None:
        self._emit("started", assignment=assignment)

    async def _on_done(
        self,
        assignment: Assignment,
        output: bytes | None,
        elapsed_ms: int,
        error: BaseException | None,
    ) -> None:
        if error is not None or output is None:
            self._held.pop(assignment.id, None)
            text = str(error) or type(error).__name__
            await self._apply(self.session.failed(assignment.id, error_code_for(error), text))
            return
        effects = self.session.finished(assignment.id, output, elapsed_ms)
        for effect in effects:
            if effect.get("event") == "completed":
                effect["output_bytes"] = len(output)
        await self._apply(effects)
        self._held.pop(assignment.id, None)

    async def _train(self, invite: dict[str, Any], deadline: float) -> None:
        """One FL round off the event loop; its end goes back to the session."""
        participation = invite["participation"]
        if self.trainer is None or self.kernel_source is None:
            code, message = "unsupported", "this worker does not train"
        else:
            kernel = invite["kernel"]
            ref = KernelRef(kernel["name"], "", kernel["sha256"], kernel["url"])
            try:
                wasm = await self.kernel_source.get(ref)
                if invite.get("secagg"):
                    code, message = await self._train_secure(invite, wasm, deadline)
                else:
                    code, message = await asyncio.to_thread(
                        self.trainer.run, invite, wasm, deadline
                    )
            except Exception as exc:  # a fetch or compile failure ends this round only
                log.warning("round %s failed: %s", participation, exc)
                code, message = "kernel_failed", str(exc)[:300] or type(exc).__name__
        await self._apply(self.session.round_finished(participation, code, message))

    async def _train_secure(
        self, invite: dict[str, Any], wasm: bytes, deadline: float
    ) -> tuple[str, str]:
        """A secure round: advertise, train, wait for the neighbours' ciphertexts, mask and
        upload the masked update (the key and unmask phases run in ``_secagg``)."""
        trainer = self.trainer
        if trainer is None:
            return "declined", "this worker does not train"
        participation = invite["participation"]
        rounds = self.secure_rounds
        try:
            await self._send(proto.encode_text(rounds.begin(invite)))
            body = await asyncio.to_thread(trainer.train, invite, wasm, deadline)
            if not await rounds.wait_ciphertexts(participation, deadline - time.monotonic()):
                rounds.end(participation)
                return "secagg_dropped", "the round's key phases did not include this worker"
            masked = await asyncio.to_thread(rounds.mask, participation, body)
            return await asyncio.to_thread(trainer.upload, invite, masked, deadline)
        except RoundError as exc:
            rounds.end(participation)
            return exc.code, exc.message

    async def _secagg(self, message: dict[str, Any]) -> None:
        """A secure round's phase message: answer it when the client has an answer (on the
        loop: key agreement and sharing for k ≤ 64 neighbours take milliseconds)."""
        answer = self.secure_rounds.handle(message)
        if answer is not None:
            await self._send(proto.encode_text(answer))

    async def _beat(self) -> None:
        await self._apply(self.session.tick())

    async def _send(self, data: str | bytes) -> bool:
        """Send on the current connection; False when there is none."""
        transport = self._transport
        if transport is None:
            return False
        try:
            await transport.send(data)
        except (ConnectionClosed, OSError):
            return False
        return True

    async def _wait_changed(self, timeout: float | None) -> None:
        """Wait for the next batch of effects (or the timeout)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        changed = self._changed  # every waiter of this round wakes on the same set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None  # the next round of waiters gets a fresh event

    def _spawn(self, coroutine: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coroutine)
        except RuntimeError:  # no event loop: nothing is running that could be affected
            coroutine.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _emit(self, name: str, **info: Any) -> None:
        log.debug("%s %s", name, info)
        if self._on_event is None:
            return
        try:
            self._on_event(name, info)
        except Exception:
            log.exception("on_event hook failed for %s", name)
