"""Worker sessions: a connected runtime's registration, resumption, slots and disconnection."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from jobs.models import Assignment, AssignmentStatus, Contributor, Worker
from jobs.services.fl_rounds_invites import fl_invites_pending_unscoped
from jobs.services.fl_secagg_requests import secagg_requests_pending_unscoped


@dataclass(frozen=True, slots=True)
class WorkerSession:
    worker_id: uuid.UUID
    contributor_id: uuid.UUID
    pool_tenant_id: uuid.UUID | None
    outstanding: list[str]
    resumed: bool
    # Invites of open rounds a resumed worker has not answered (a new worker has none).
    invites: list[dict[str, Any]] = field(default_factory=list)
    # The ``worker.secagg`` events of the secure-round phase requests a resumed worker has not
    # answered (the close sent them to its old socket); the consumer sends them after welcome.
    secagg_requests: list[dict[str, Any]] = field(default_factory=list)


@transaction.atomic
def worker_connect(
    *, contributor: Contributor, hello: dict[str, Any], channel_name: str
) -> WorkerSession:
    """Register (or resume) a worker for a validated ``hello`` message."""
    now = timezone.now()
    client = hello["client"]
    worker = None
    resume = hello.get("resume")
    if resume:
        worker = (
            Worker.objects.select_for_update()
            .filter(pk=resume, contributor=contributor, is_banned=False)
            .first()
        )
    resumed = worker is not None
    if worker is None:
        worker = Worker(contributor=contributor)
    worker.kind = client["kind"]
    worker.client_version = client.get("version", "")[:40]
    worker.user_agent = client.get("user_agent", "")[:300]
    worker.capabilities = hello["capabilities"]
    worker.slots = hello["slots"]
    worker.channel_name = channel_name
    worker.connected_at = now
    worker.last_seen_at = now
    worker.disconnected_at = None
    worker.is_online = True
    worker.save()
    outstanding = (
        [
            str(a)
            for a in Assignment.objects.unscoped()
            .filter(worker=worker, status=AssignmentStatus.ASSIGNED)
            .values_list("id", flat=True)
        ]
        if resumed
        else []
    )
    return WorkerSession(
        worker_id=worker.pk,
        contributor_id=contributor.pk,
        pool_tenant_id=contributor.pool_tenant_id,
        outstanding=outstanding,
        resumed=resumed,
        invites=fl_invites_pending_unscoped(worker_id=worker.pk) if resumed else [],
        secagg_requests=secagg_requests_pending_unscoped(worker_id=worker.pk) if resumed else [],
    )


def worker_disconnect(*, worker_id: uuid.UUID) -> None:
    """Mark a worker offline. Its leases stay: a reconnect within the lease keeps its work."""
    Worker.objects.filter(pk=worker_id).update(
        is_online=False, disconnected_at=timezone.now(), channel_name=""
    )


def worker_set_slots(*, worker_id: uuid.UUID, slots: int) -> None:
    """Record how many tasks the worker runs at once."""
    Worker.objects.filter(pk=worker_id).update(slots=slots, last_seen_at=timezone.now())
