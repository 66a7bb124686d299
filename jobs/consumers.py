"""WebSocket consumers: workers (browser and edge) and the job director.

Thin by design: authenticate, validate each message against its schema, call a service through
``database_sync_to_async``, send what it returns. No ORM here.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from django.conf import settings

from jobs import dispatch, protocol, realtime
from jobs.consumer_base import GuardedConsumer, TokenBucket, db
from jobs.consumers_invites import RoundInviteMixin
from jobs.consumers_secagg import SecAggConsumerMixin
from jobs.dispatch.batch import ClaimItem, ErrorItem, HeartbeatItem, ResultItem
from jobs.dispatch.batch_sessions import DisconnectItem, HelloItem
from jobs.dispatch.flusher import flusher, group_commit_enabled
from jobs.dispatch.idle import IdleConsumer, idle_registry
from jobs.protocol import ProtocolError
from jobs.services.fl_rounds_declines import participation_decline


class WorkerConsumer(RoundInviteMixin, SecAggConsumerMixin, GuardedConsumer):
    """One worker connection. Work is pushed: claims happen on hello, after each result, and
    whenever the dispatch group is woken because tasks became ready.

    With group commit (PostgreSQL) hellos, results, heartbeats, errors, claims and disconnects
    go through the process's flusher (one transaction per flush, answers after commit), the
    worker holds ``DISPATCH_PREFETCH`` tasks beyond its slots, and wakes reach only idle
    consumers, through the process's idle registry rather than a group with every socket in it.
    A consumer arms no timer of its own once welcomed: the registry re-checks all the
    process's idle sockets at once (``jobs.dispatch.idle``)."""

    worker_id: uuid.UUID | None = None
    contributor_id: uuid.UUID | None = None
    hello_timer: asyncio.TimerHandle | None = None
    confirm_timer: asyncio.TimerHandle | None = None
    released = False
    # A resumed session's outstanding leases count as in flight until the worker shows it no
    # longer holds them: no progress, result or error for one within this time (clients send a
    # progress for every held task on welcome and every half heartbeat period).
    resume_confirm_ms = dispatch.HEARTBEAT_MS

    async def connect(self) -> None:
        self.slots = 0
        self.group_commit = group_commit_enabled()
        self.in_flight: set[str] = set()
        self.unconfirmed: set[str] = set()
        self.bucket = TokenBucket(protocol.MESSAGES_PER_SECOND, protocol.MESSAGE_BURST)
        self.violations = 0
        self.fill_lock = asyncio.Lock()
        self.invites_sent: set[int] = set()
        await self.accept()
        loop = asyncio.get_running_loop()
        self.hello_timer = loop.call_later(protocol.HELLO_TIMEOUT_S, self._hello_timeout)

    def _hello_timeout(self) -> None:
        if self.worker_id is None:
            asyncio.ensure_future(self.close(code=protocol.CLOSE_HELLO_TIMEOUT))

    async def disconnect(self, code: int) -> None:
        await self.release()

    async def release(self) -> None:
        """Stop the hello timer and mark the worker offline, once."""
        if self.released:
            return
        self.released = True
        for timer in (self.hello_timer, self.confirm_timer):
            if timer is not None:
                timer.cancel()
        if self.worker_id is not None:
            idle_registry().discard(self.channel_name)
            # The database row first: a channel-layer outage must not leave the worker online.
            try:
                await self._worker_offline()
            finally:
                if self.group_commit:
                    flusher().local_discard(self.channel_name)
                else:
                    await self.channel_layer.group_discard(
                        realtime.DISPATCH_GROUP, self.channel_name
                    )

    async def _worker_offline(self) -> None:
        """Mark this socket's worker offline (in the next flush with group commit)."""
        if self.group_commit:
            await flusher().submit(DisconnectItem(worker_id=self.worker_id))
        else:
            await db(dispatch.worker_disconnect)(worker_id=self.worker_id)

    async def send_error(self, code: str, message: str, ref: str | None = None) -> None:
        await self.send_message(protocol.error(code=code, message=message, ref=ref))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.released:
            return
        if not self.bucket.take():
            self.violations += 1
            if self.violations > protocol.MAX_RATE_VIOLATIONS:
                await self.close(code=protocol.CLOSE_RATE_LIMITED)
            else:
                await self.send_error("rate_limited", "slow down: message dropped")
            return
        try:
            if bytes_data is not None:
                frame = protocol.parse_result_frame(bytes_data)
                await self._require_hello()
                await self.on_result(frame)
                return
            message = protocol.parse_text(text_data or "")
            kind = message["type"]
            if kind == "hello":
                await self.on_hello(message)
                return
            await self._require_hello()
            handler = getattr(self, f"on_{kind}")
            await handler(message)
        except ProtocolError as exc:
            ref = exc.ref if exc.ref is not None else protocol.type_of(text_data)
            await self.send_error(exc.code, exc.message, ref=ref)
            if exc.code == "too_large":
                await self.close(code=protocol.CLOSE_TOO_LARGE)
            elif exc.code == "protocol_version" and self.worker_id is None:
                await self.close(code=protocol.CLOSE_PROTOCOL_VERSION)

    async def _require_hello(self) -> None:
        if self.worker_id is None:
            raise ProtocolError("invalid_message", "send 'hello' first")

    async def on_hello(self, message: dict[str, Any]) -> None:
        if self.worker_id is not None:
            raise ProtocolError("invalid_message", "already said hello", ref="hello")
        session = await self._session(message)
        if session is None:
            await self.send_error("unauthorized", "invalid, revoked or banned worker token")
            await self.close(code=protocol.CLOSE_UNAUTHORIZED)
            return
        self.worker_id = session.worker_id
        self.contributor_id = session.contributor_id
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        if self.released:
            # The socket closed while the worker was being registered: undo it.
            await self._worker_offline()
            return
        self.slots = message["slots"]
        if self.group_commit:
            flusher().local_add(self.channel_name, self.dispatch)
        else:
            await self.channel_layer.group_add(realtime.DISPATCH_GROUP, self.channel_name)
        await self.send_message(
            protocol.welcome(
                worker=session.worker_id,
                contributor=session.contributor_id,
                heartbeat_ms=dispatch.HEARTBEAT_MS,
                outstanding=session.outstanding,
            )
        )
        self._outstanding_hold(session.outstanding)
        # What the session read for a resumed worker, after welcome: no query of its own.
        await self.invites_send(session.invites)
        await self.secagg_requests_resend(session.secagg_requests)
        await self.fill()

    async def _session(self, message: dict[str, Any]) -> dispatch.WorkerSession | None:
        """Register (or resume) the worker of a hello; None when its token is refused. With
        group commit the signature is checked here and the rest in the flusher's batch."""
        expected_kind = self.scope.get("worker_kind")

        def check_kind() -> None:
            if expected_kind and message["client"]["kind"] != expected_kind:
                raise ProtocolError(
                    "invalid_message", f"this endpoint serves {expected_kind} workers", ref="hello"
                )

        if not self.group_commit:
            contributor = await db(dispatch.worker_token_verify)(token=message["token"])
            if contributor is None:
                return None
            check_kind()
            return await db(dispatch.worker_connect)(
                contributor=contributor, hello=message, channel_name=self.channel_name
            )
        signed = dispatch.worker_token_read(token=message["token"])
        if signed is None:
            return None
        check_kind()
        return await flusher().submit(
            HelloItem(
                contributor_id=signed[0],
                token_version=signed[1],
                hello=message,
                channel_name=self.channel_name,
            )
        )

    def _outstanding_hold(self, outstanding: list[str]) -> None:
        """A resumed worker's outstanding leases are in flight on this connection too: it must
        not be claimed a full set of slots on top of what it still runs."""
        self.in_flight.update(outstanding)
        self.unconfirmed.update(outstanding)
        if self.unconfirmed:
            self.confirm_timer = asyncio.get_running_loop().call_later(
                self.resume_confirm_ms / 1000, self._unconfirmed_drop
            )

    def _unconfirmed_drop(self) -> None:
        """Outstanding leases the worker never named are not running there: free their slots
        (the sweeper expires the leases themselves)."""
        self.in_flight.difference_update(self.unconfirmed)
        self.unconfirmed.clear()
        if not self.released:
            asyncio.ensure_future(self.fill())

    async def on_capacity(self, message: dict[str, Any]) -> None:
        self.slots = message["slots"]
        await db(dispatch.worker_set_slots)(worker_id=self.worker_id, slots=self.slots)
        await self.fill()

    async def on_ping(self, message: dict[str, Any]) -> None:
        await self.send_message(protocol.pong())

    async def on_progress(self, message: dict[str, Any]) -> None:
        self.unconfirmed.discard(message["assignment"])
        if self.group_commit:
            held = await flusher().submit(
                HeartbeatItem(worker_id=self.worker_id, assignment_id=message["assignment"])
            )
        else:
            held = await db(dispatch.assignment_heartbeat)(
                worker_id=self.worker_id, assignment_id=message["assignment"]
            )
        if not held:
            self.in_flight.discard(message["assignment"])
            await self.send_message(
                protocol.cancel(assignment=message["assignment"], reason="lease_lost")
            )

    async def on_round_declined(self, message: dict[str, Any]) -> None:
        # Nothing is answered: a decline that crossed the round's close changes nothing.
        await db(participation_decline)(
            worker_id=self.worker_id,
            participation_id=message["participation"],
            reason=message["reason"],
            message=message.get("message", ""),
        )

    async def on_error(self, message: dict[str, Any]) -> None:
        self.unconfirmed.discard(message["assignment"])
        item = ErrorItem(
            worker_id=self.worker_id,
            assignment_id=message["assignment"],
            code=message["code"],
            message=message.get("message", ""),
        )
        if self.group_commit:
            await flusher().submit(item)
        else:
            await db(dispatch.assignment_error)(
                worker_id=item.worker_id,
                assignment_id=item.assignment_id,
                code=item.code,
                message=item.message,
            )
        self.in_flight.discard(message["assignment"])
        await self.fill()

    async def on_result(self, frame: protocol.ResultFrame) -> None:
        header = frame.header
        self.unconfirmed.discard(header["assignment"])
        if not self.group_commit:
            try:
                outcome = await db(dispatch.result_submit)(
                    contributor_id=self.contributor_id,
                    assignment_id=header["assignment"],
                    output=frame.output,
                    sha256=header["sha256"],
                    elapsed_ms=header.get("elapsed_ms"),
                )
            except ValueError as exc:
                raise ProtocolError("invalid_result", str(exc), ref="result") from exc
            self.in_flight.discard(header["assignment"])
            await self.send_message(
                protocol.ack(assignment=header["assignment"], status=outcome.status)
            )
            await self.fill()
            return
        # Group commit: the refill is claimed in the result's own flush, so the next ``assign``
        # follows the ``ack`` without a second round trip. A refused result claims nothing.
        async with self.fill_lock:
            held = header["assignment"] in self.in_flight
            self.in_flight.discard(header["assignment"])
            refill = self._free() if not self.released else 0
            try:
                outcome = await flusher().submit(
                    ResultItem(
                        contributor_id=self.contributor_id,
                        assignment_id=header["assignment"],
                        output=frame.output,
                        sha256=header["sha256"],
                        elapsed_ms=header.get("elapsed_ms"),
                        worker_id=self.worker_id,
                        refill=refill,
                    )
                )
            except ValueError as exc:
                if held:
                    self.in_flight.add(header["assignment"])
                raise ProtocolError("invalid_result", str(exc), ref="result") from exc
            await self.send_message(
                protocol.ack(assignment=header["assignment"], status=outcome.status)
            )
            await self._push(outcome.offers, wanted=refill)

    def _free(self) -> int:
        """How many more tasks this worker should hold (its slots, plus the prefetch)."""
        free = self.slots - len(self.in_flight)
        if self.group_commit and self.slots > 0:
            free += settings.DISPATCH_PREFETCH
        return free

    async def fill(self) -> None:
        """Claim work for every free slot and push it.

        With group commit the free slots are claimed first and the prefetch in a second claim,
        once the first claim's ``assign``s are handed to the socket: that claim rides the next
        flush. A job start's wakes and a burst of hellos then put one replica per socket in
        their first flush, not one plus the prefetch, and the task a worker can start now goes
        out sooner. A result's refill still claims slots and prefetch in one flush
        (``on_result``)."""
        if self.worker_id is None or self.released:
            return
        async with self.fill_lock:
            if not self.group_commit:
                free = self._free()
                if free > 0:
                    offers = await db(dispatch.assignment_claim)(
                        worker_id=self.worker_id, count=free
                    )
                    await self._push(offers, wanted=free)
                return
            startable = self.slots - len(self.in_flight)
            started = 0
            if startable > 0:
                offers = await flusher().submit(
                    ClaimItem(worker_id=self.worker_id, count=startable)
                )
                await self._push(offers, wanted=startable)
                if len(offers) < startable:
                    return
                started = len(offers)
        # The lock is let go between the two claims: a result that arrives meanwhile claims its
        # refill (slots and prefetch) at once, and this claim then takes what is still free. A
        # socket that just got tasks to start holds its prefetch claim for a moment (its tasks
        # run meanwhile); one whose slots were busy already claims it now.
        if started and settings.DISPATCH_PREFETCH_HOLD_S > 0:
            await asyncio.sleep(settings.DISPATCH_PREFETCH_HOLD_S)
        async with self.fill_lock:
            prefetch = self._free()
            if prefetch > 0 and not self.released:
                offers = await flusher().submit(
                    ClaimItem(worker_id=self.worker_id, count=prefetch, prefetch=True)
                )
                await self._push(offers, wanted=prefetch)

    async def _push(self, offers: list[dispatch.Offer], *, wanted: int) -> None:
        """Send claimed offers; with fewer than ``wanted``, wait to be woken (caller holds the
        fill lock)."""
        if len(offers) < wanted and not self.released and self.worker_id is not None:
            idle_registry().add(
                self.channel_name,
                IdleConsumer(worker_id=self.worker_id, fill=self.fill, invite=self.invites_send),
            )
        elif wanted > 0:
            idle_registry().discard(self.channel_name)
        for offer in offers:
            self.in_flight.add(str(offer.assignment_id))
            await self.send(
                text_data=protocol.assign_text(
                    assignment=offer.assignment_id,
                    job=offer.job_id,
                    task=offer.task_index,
                    kernel_name=offer.kernel_name,
                    kernel_version=offer.kernel_version,
                    kernel_sha256=offer.kernel_sha256,
                    lo=offer.lo,
                    hi=offer.hi,
                    seed=offer.seed,
                    params=offer.params,
                    lease_ms=offer.lease_ms,
                    work_units=offer.work_units,
                )
            )

    # ---- channel-layer events (sent by services after commit)

    async def dispatch_wake(self, event: dict[str, Any]) -> None:
        await self.fill()

    async def worker_cancel(self, event: dict[str, Any]) -> None:
        self.in_flight.discard(event["assignment"])
        await self.send_message(
            protocol.cancel(assignment=event["assignment"], reason=event["reason"])
        )
        await self.fill()

    async def worker_credit(self, event: dict[str, Any]) -> None:
        await self.send_message(
            protocol.credit(validated=event["validated"], work_units=event["work_units"])
        )


class BrowserWorkerConsumer(WorkerConsumer):
    """Browser pages (origin-validated route)."""

    async def connect(self) -> None:
        self.scope["worker_kind"] = "browser"
        await super().connect()


class EdgeWorkerConsumer(WorkerConsumer):
    """Edge processes (token-only route)."""

    async def connect(self) -> None:
        self.scope["worker_kind"] = "edge"
        await super().connect()
