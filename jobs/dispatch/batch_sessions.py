"""Group commit's sessions: many sockets' hellos and disconnects in one flush (see
:mod:`jobs.dispatch.batch` for the transaction they run in).

A reconnect storm (a Daphne died, a network came back) brings thousands of hellos at once.
Item by item each costs a token lookup, a transaction registering the worker and, for a resumed
worker, its outstanding leases, pending invites and unanswered secure-round phase requests:
thousands of transactions. Here a flush's hellos cost one read of their contributors, one UPDATE
resuming the workers that asked to be resumed, one INSERT of the new ones, and one read each of
the resumed workers' leases, invites and phase requests (plus a few reads per open secure round
waiting on one of them), whatever their number. Token signatures are checked by the consumer
before the item is queued (no database); revocation and bans are decided here, as
:func:`worker_token_verify` does.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from jobs.dispatch.batch_leases import update_from_values
from jobs.dispatch.sessions import WorkerSession, worker_connect, worker_disconnect
from jobs.dispatch.tokens import token_current
from jobs.models import Assignment, AssignmentStatus, Contributor, Worker
from jobs.services.fl_rounds_invites import fl_invites_pending_by_worker_unscoped
from jobs.services.fl_secagg_requests import secagg_requests_pending_by_worker_unscoped


@dataclass(frozen=True, slots=True)
class HelloItem:
    """A validated ``hello`` whose token signature holds: (contributor, token version)."""

    contributor_id: uuid.UUID
    token_version: int
    hello: dict[str, Any]
    channel_name: str


@dataclass(frozen=True, slots=True)
class DisconnectItem:
    worker_id: uuid.UUID


def _session_fields(hello: dict[str, Any]) -> dict[str, Any]:
    """The worker columns a hello sets (as :func:`worker_connect` sets them)."""
    client = hello["client"]
    return {
        "kind": client["kind"],
        "client_version": client.get("version", "")[:40],
        "user_agent": client.get("user_agent", "")[:300],
        "capabilities": hello["capabilities"],
        "slots": hello["slots"],
    }


def _resume_id(hello: dict[str, Any]) -> uuid.UUID | None:
    try:
        return uuid.UUID(hello["resume"]) if hello.get("resume") else None
    except (TypeError, ValueError):
        return None


def hellos_batch(*, items: list[HelloItem]) -> list[WorkerSession | None]:
    """Register or resume the workers of many hellos in the caller's transaction; per item, in
    input order, its session, or None when its token is revoked or its contributor banned.

    Same outcome as :func:`worker_connect` item by item, except that two hellos of one batch
    asking to resume the same worker do not share it: the first resumes it, the next gets a new
    worker (one worker row per socket)."""
    if not items:
        return []
    contributors = {
        c.pk: c
        for c in Contributor.objects.filter(pk__in={item.contributor_id for item in items}).only(
            "id", "is_banned", "token_version", "pool_tenant_id"
        )
    }
    accepted = [
        index
        for index, item in enumerate(items)
        if token_current(contributors.get(item.contributor_id), item.token_version)
    ]
    now = timezone.now()
    resume_rows, resuming, claimed = [], {}, set()
    for index in accepted:
        item = items[index]
        resume = _resume_id(item.hello)
        if resume is None or resume in claimed:
            continue
        claimed.add(resume)
        resuming[index] = resume
        fields = _session_fields(item.hello)
        resume_rows.append(
            (
                resume,
                item.contributor_id,
                fields["kind"],
                fields["client_version"],
                fields["user_agent"],
                json.dumps(fields["capabilities"]),
                fields["slots"],
                item.channel_name,
            )
        )
    # One statement checks and resumes: the worker exists, is the contributor's, not banned.
    resumed = {
        row[0]
        for row in update_from_values(
            Worker._meta.db_table,
            [
                ("id", "uuid"),
                ("contributor", "uuid"),
                ("kind", "varchar"),
                ("client_version", "varchar"),
                ("user_agent", "varchar"),
                ("capabilities", "jsonb"),
                ("slots", "smallint"),
                ("channel_name", "varchar"),
            ],
            resume_rows,
            "kind = v.kind, client_version = v.client_version, user_agent = v.user_agent, "
            "capabilities = v.capabilities, slots = v.slots, channel_name = v.channel_name, "
            "connected_at = %s, last_seen_at = %s, disconnected_at = NULL, is_online = TRUE",
            where="t.contributor_id = v.contributor AND NOT t.is_banned",
            returning="t.id",
            leading_params=[now, now],
        )
    }
    worker_of: dict[int, uuid.UUID] = {}
    new_workers = []
    for index in accepted:
        item = items[index]
        if resuming.get(index) in resumed:
            worker_of[index] = resuming[index]
            continue
        worker = Worker(
            contributor_id=item.contributor_id,
            channel_name=item.channel_name,
            connected_at=now,
            last_seen_at=now,
            is_online=True,
            **_session_fields(item.hello),
        )
        new_workers.append(worker)
        worker_of[index] = worker.pk
    Worker.objects.bulk_create(new_workers)
    outstanding: dict[uuid.UUID, list[str]] = {}
    if resumed:
        for worker_id, assignment_id in (
            Assignment.objects.unscoped()
            .filter(worker_id__in=resumed, status=AssignmentStatus.ASSIGNED)
            .values_list("worker_id", "id")
        ):
            outstanding.setdefault(worker_id, []).append(str(assignment_id))
    invites = fl_invites_pending_by_worker_unscoped(worker_ids=list(resumed))
    secagg_requests = secagg_requests_pending_by_worker_unscoped(worker_ids=list(resumed))
    sessions: list[WorkerSession | None] = [None] * len(items)
    for index, worker_id in worker_of.items():
        item = items[index]
        sessions[index] = WorkerSession(
            worker_id=worker_id,
            contributor_id=item.contributor_id,
            pool_tenant_id=contributors[item.contributor_id].pool_tenant_id,
            outstanding=outstanding.get(worker_id, []),
            resumed=worker_id in resumed,
            invites=invites.get(worker_id, []),
            secagg_requests=secagg_requests.get(worker_id, []),
        )
    return sessions


def hello_alone(item: HelloItem) -> WorkerSession | None:
    """One hello in its own transaction (the flusher's fallback when a batch fails)."""
    contributor = Contributor.objects.filter(pk=item.contributor_id).first()
    if not token_current(contributor, item.token_version):
        return None
    return worker_connect(contributor=contributor, hello=item.hello, channel_name=item.channel_name)


def disconnects_batch(*, items: list[DisconnectItem]) -> list[None]:
    """Mark many workers offline with one UPDATE (as :func:`worker_disconnect` does)."""
    if items:
        Worker.objects.filter(pk__in={item.worker_id for item in items}).update(
            is_online=False, disconnected_at=timezone.now(), channel_name=""
        )
    return [None] * len(items)


def disconnect_alone(item: DisconnectItem) -> None:
    worker_disconnect(worker_id=item.worker_id)
