"""The job director: live state of one job over a WebSocket for members of its tenant."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from channels.db import database_sync_to_async
from django.core.exceptions import PermissionDenied, ValidationError

from ccgsc_site.forms import error_text
from jobs import protocol, realtime, selectors, services
from jobs.consumer_base import GuardedConsumer, TokenBucket
from jobs.protocol import ProtocolError

DIRECTOR_INTERVAL_S = 1.0

# One snapshot per job per interval in each process, shared by all its viewers of that job:
# a thousand viewers of one job cost one job_state a second, not a thousand.
_snapshots: dict[tuple[Any, ...], tuple[float, asyncio.Future]] = {}


# When this process first heard of each FL round close: its viewers then share one read begun
# after that moment, so a close reaches every chart at once and costs one job_state.
_round_closes_seen: dict[tuple[Any, ...], float] = {}


def round_close_seen_at(*, job_id: Any, round_number: int) -> float:
    """The (monotonic) time this process first received the close of ``round_number``."""
    now = time.monotonic()
    for old in [k for k, at in _round_closes_seen.items() if now - at > 60 * DIRECTOR_INTERVAL_S]:
        del _round_closes_seen[old]
    return _round_closes_seen.setdefault((job_id, round_number), now)


async def job_state_shared(
    *, tenant: Any, job_id: Any, not_before: float = 0.0
) -> tuple[float, dict[str, Any]]:
    """The job's director snapshot, reused by every viewer in this process for one interval,
    with the (monotonic) time its read began; a snapshot begun before ``not_before`` is not
    reused."""
    loop = asyncio.get_running_loop()
    key = (loop, tenant.pk, job_id)
    now = time.monotonic()
    cached = _snapshots.get(key)
    if cached is not None and now - cached[0] < DIRECTOR_INTERVAL_S and cached[0] >= not_before:
        return cached[0], await asyncio.shield(cached[1])
    for stale in [k for k, (at, _) in _snapshots.items() if now - at >= DIRECTOR_INTERVAL_S]:
        del _snapshots[stale]
    future = asyncio.ensure_future(
        database_sync_to_async(selectors.job_state)(tenant=tenant, job_id=job_id)
    )
    _snapshots[key] = (now, future)
    try:
        return now, await asyncio.shield(future)
    except Exception:
        _snapshots.pop(key, None)
        raise


class JobDirectorConsumer(GuardedConsumer):
    """Live state of one job for members of its tenant; controls subject to role checks.

    A viewer who may not see the job is accepted and then closed with 4004: refusing the
    handshake would reach a browser as an HTTP 403 with no close code, and the page could not
    tell "not yours" from "server restarting"."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        job_id = self.scope["url_route"]["kwargs"]["job_id"]
        access = None
        if user is not None and user.is_authenticated:
            access = await database_sync_to_async(selectors.job_access_for_user)(
                user=user, job_id=job_id
            )
        await self.accept()
        if access is None:
            await self.close(code=protocol.CLOSE_NOT_FOUND)
            return
        self.access = access
        self.bucket = TokenBucket(
            protocol.DIRECTOR_CONTROLS_PER_SECOND, protocol.DIRECTOR_CONTROL_BURST
        )
        self.violations = 0
        self.group = realtime.job_group(access.job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.last_state: dict[str, Any] | None = None
        self.state_read_at = 0.0
        self.ticker = asyncio.ensure_future(self._tick())

    async def disconnect(self, code: int) -> None:
        await self.release()

    async def release(self) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if hasattr(self, "ticker"):
            self.ticker.cancel()

    def build_error(self, code: str, message: str, ref: str | None = None) -> dict[str, Any]:
        return protocol.director_error(code=code, message=message)

    async def _tick(self) -> None:
        await self.push_state()
        while True:
            await asyncio.sleep(DIRECTOR_INTERVAL_S)
            await self.push_state(shared=True)

    async def push_state(self, *, shared: bool = False, not_before: float = 0.0) -> None:
        """Send the job's state if it changed. On connect, after a control or an event it is
        read now; the ticker and round closes (``shared``) reuse this process's snapshot of the
        last interval (begun after ``not_before``), unless that is older than what this viewer
        already has."""
        if shared:
            read_at, state = await job_state_shared(
                tenant=self.access.tenant, job_id=self.access.job_id, not_before=not_before
            )
            if read_at < self.state_read_at:
                return
        else:
            read_at = time.monotonic()
            state = await database_sync_to_async(selectors.job_state)(
                tenant=self.access.tenant, job_id=self.access.job_id
            )
        self.state_read_at = max(self.state_read_at, read_at)
        if state != self.last_state:
            self.last_state = state
            await self.send_message(protocol.director_state(state=state))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not hasattr(self, "access"):
            return
        if not self.bucket.take():
            self.violations += 1
            if self.violations > protocol.DIRECTOR_MAX_RATE_VIOLATIONS:
                await self.close(code=protocol.CLOSE_RATE_LIMITED)
            else:
                await self.send_message(
                    self.build_error("rate_limited", "slow down: control dropped")
                )
            return
        try:
            if bytes_data is not None:
                if len(bytes_data) > protocol.MAX_JSON_BYTES:
                    raise ProtocolError("too_large", "frame over its size limit")
                raise ProtocolError("invalid_message", "the director accepts text frames only")
            message = protocol.parse_text(text_data or "", route="director")
        except ProtocolError as exc:
            await self.send_message(self.build_error(exc.code, exc.message))
            if exc.code == "too_large":
                await self.close(code=protocol.CLOSE_TOO_LARGE)
            return
        try:
            await database_sync_to_async(services.job_control)(
                tenant=self.access.tenant,
                job_id=self.access.job_id,
                role=self.access.role,
                action=message["action"],
            )
        except (ValidationError, PermissionDenied) as exc:
            await self.send_message(self.build_error("refused", error_text(exc)))
            return
        await self.push_state()

    async def job_event(self, event: dict[str, Any]) -> None:
        await self.send_message(
            protocol.director_event(kind=event["kind"], message=event["message"], at=event["at"])
        )
        await self.push_state()

    async def job_round_closed(self, event: dict[str, Any]) -> None:
        """An FL round closed (sent after commit): the curves gain a point now, not at the next
        tick, and all this process's viewers of the job share one read."""
        await self.push_state(
            shared=True,
            not_before=round_close_seen_at(job_id=self.access.job_id, round_number=event["round"]),
        )
