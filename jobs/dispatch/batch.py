"""Group commit: many sockets' results, heartbeats, errors and claims in one transaction.

A Daphne process's flusher (:mod:`jobs.dispatch.flusher`) gathers what its sockets sent in the
last few milliseconds and hands it here. :func:`dispatch_batch` writes it with set-based SQL in
one transaction and returns every item's outcome; the flusher acknowledges only after it
returns, so nothing is acknowledged that did not commit. When the transaction fails, the flusher
runs each item again through the per-item services (``result_submit``, ``assignment_heartbeat``,
``assignment_error``, ``assignment_claim``), each in its own transaction, so one poison item
cannot sink the others.

Claims (:func:`claims_batch`) take tasks for every claiming worker with one ``SKIP LOCKED``
select, one UPDATE and one INSERT.

Locks, always in this order: the batch's assignments (id order), then their tasks (id order),
then jobs and ledger accounts (id order, inside the services). Claims take tasks with SKIP
LOCKED, so they never wait on a result being stored.

The common result (a live replica of an open task without a known answer) is stored and
decided set-based: one UPDATE for the assignments, one query for the replicas returned so far,
:func:`jobs.quorum.quorum_decide` per task, then one statement each for valid and invalid
replicas, workers, contributors, tasks and jobs, and one call of the metering port's
``tasks_validated`` for the whole batch. Anything rarer (a late replica, a task already closed,
a known-answer task, a task that needs another replica or fails) goes through the per-item code
inside the same transaction: correct first, fast where it matters.

PostgreSQL only (``UPDATE ... FROM (VALUES ...)``); the flusher is off on other databases.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace

from django.db import transaction

from jobs.dispatch.batch_leases import (
    ClaimItem,
    HeartbeatItem,
    claims_batch,
    heartbeats_extend_batch,
)
from jobs.dispatch.batch_results import ResultItem, results_store_batch
from jobs.dispatch.batch_sessions import (
    DisconnectItem,
    HelloItem,
    disconnects_batch,
    hellos_batch,
)
from jobs.dispatch.claim import Offer
from jobs.dispatch.results import ResultOutcome, assignment_error
from jobs.dispatch.sessions import WorkerSession


@dataclass(frozen=True, slots=True)
class ErrorItem:
    worker_id: uuid.UUID
    assignment_id: str
    code: str
    message: str


@dataclass(slots=True)
class BatchOutcome:
    """Per item, in input order: a ResultOutcome or the ValueError to report; lease held or not;
    error recorded or not; the offers claimed; the session (None: token refused); None."""

    results: list[ResultOutcome | ValueError] = field(default_factory=list)
    heartbeats: list[bool] = field(default_factory=list)
    errors: list[bool] = field(default_factory=list)
    claims: list[list[Offer]] = field(default_factory=list)
    hellos: list[WorkerSession | None] = field(default_factory=list)
    disconnects: list[None] = field(default_factory=list)
    statements: int = 0


def dispatch_batch(
    *,
    results: list[ResultItem] = (),  # type: ignore[assignment]
    heartbeats: list[HeartbeatItem] = (),  # type: ignore[assignment]
    errors: list[ErrorItem] = (),  # type: ignore[assignment]
    claims: list[ClaimItem] = (),  # type: ignore[assignment]
    hellos: list[HelloItem] = (),  # type: ignore[assignment]
    disconnects: list[DisconnectItem] = (),  # type: ignore[assignment]
) -> BatchOutcome:
    """Handle a flush in one transaction; every outcome holds only once it returns (committed).

    Results go first, so tasks they free (another replica needed, an error) can be claimed by
    the same flush; a stored result's refill is claimed with the other claims and its offers
    ride on its outcome. Hellos register their workers first (a hello's own claim comes in a
    later flush, after its ``welcome``); disconnects go last."""
    outcome = BatchOutcome()
    with transaction.atomic():
        outcome.hellos = hellos_batch(items=list(hellos))
        outcome.results = results_store_batch(items=list(results))
        refills = [
            (index, ClaimItem(worker_id=item.worker_id, count=item.refill))
            for index, (item, stored) in enumerate(zip(results, outcome.results, strict=True))
            if item.refill > 0 and item.worker_id is not None and isinstance(stored, ResultOutcome)
        ]
        outcome.heartbeats = heartbeats_extend_batch(items=list(heartbeats))
        outcome.errors = [
            assignment_error(
                worker_id=item.worker_id,
                assignment_id=item.assignment_id,
                code=item.code,
                message=item.message,
            )
            for item in errors
        ]
        claimed = claims_batch(items=[*claims, *(claim for _, claim in refills)])
        outcome.claims = claimed[: len(claims)]
        for (index, _), offers in zip(refills, claimed[len(claims) :], strict=True):
            # A copy: a repeat of the same result in the batch shares the first one's outcome.
            outcome.results[index] = replace(outcome.results[index], offers=offers)
        outcome.disconnects = disconnects_batch(items=list(disconnects))
    return outcome
