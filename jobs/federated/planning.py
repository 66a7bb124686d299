"""Round planning for synchronous FL, as pure code: cohort selection and the round's states.

A round invites an over-selected cohort from the eligible workers, waits for reports until its
target is met or its deadline passes, and closes when the policy says so (Bonawitz et al. 2019,
"Towards Federated Learning at Scale": over-selection, deadline-based inclusion, a minimum
number of reports). Times are plain float seconds (the platform passes epoch seconds, the
simulator simulated seconds). The state is a dataclass that round-trips through JSON, so the
platform stores it with the round row and a restart resumes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import numpy as np


@dataclass(frozen=True)
class WorkerInfo:
    """A connected worker the planner may invite: its id and advertised capabilities."""

    worker_id: str
    capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CohortPolicy:
    """How many to invite and who may be invited.

    Exactly one of ``count`` (clients per round) or ``fraction`` (C of the eligible, at least
    one) sets the round's target; ``over_selection`` ≥ 1 multiplies it for the invitations (the
    first ``target`` reports are used). ``min_reports`` (default: the target) is the least a
    round needs to close successfully; ``deadline_seconds`` bounds the wait.
    """

    count: int | None = None
    fraction: float | None = None
    over_selection: float = 1.0
    min_reports: int | None = None
    deadline_seconds: float = 600.0
    required_capabilities: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if (self.count is None) == (self.fraction is None):
            raise ValueError("give exactly one of count or fraction")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be at least 1")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError("fraction must be in (0, 1]")
        if self.over_selection < 1.0:
            raise ValueError("over_selection must be at least 1")
        if self.min_reports is not None and self.min_reports < 1:
            raise ValueError("min_reports must be at least 1")
        if not self.deadline_seconds > 0.0:
            raise ValueError("deadline_seconds must be positive")

    def target(self, eligible: int) -> int:
        """Reports the round wants, given ``eligible`` workers (0 when none are)."""
        if eligible == 0:
            return 0
        wanted = self.count if self.count is not None else math.ceil(self.fraction * eligible)  # type: ignore[operator]
        return max(1, min(wanted, eligible))

    def invitations(self, eligible: int) -> int:
        """Workers to invite: the target over-selected, capped by the eligible."""
        return min(eligible, math.ceil(self.target(eligible) * self.over_selection))


@dataclass(frozen=True)
class Cohort:
    """The invited worker ids (in invitation order), the target and the minimum."""

    invited: tuple[str, ...]
    target: int
    min_reports: int


class NotEnoughWorkers(Exception):
    """Fewer eligible workers than the round's minimum number of reports."""


def eligible_workers(workers: list[WorkerInfo], policy: CohortPolicy) -> list[WorkerInfo]:
    """The workers that have every required capability, sorted by id (a stable base order)."""
    chosen = [w for w in workers if policy.required_capabilities <= w.capabilities]
    return sorted(chosen, key=lambda w: w.worker_id)


def select_cohort(
    workers: list[WorkerInfo], policy: CohortPolicy, *, seed: int, round_number: int
) -> Cohort:
    """Draw the round's cohort uniformly without replacement; deterministic for (seed, round).

    Raises ``NotEnoughWorkers`` when fewer workers are eligible than ``min_reports``.
    """
    pool = eligible_workers(workers, policy)
    target = policy.target(len(pool))
    minimum = min(policy.min_reports or target, target) if target else 0
    if policy.min_reports is not None and len(pool) < policy.min_reports:
        raise NotEnoughWorkers(f"{len(pool)} eligible workers, {policy.min_reports} needed")
    if target == 0:
        raise NotEnoughWorkers("no eligible worker")
    rng = np.random.default_rng([seed, round_number, 0xC0])
    picks = rng.choice(len(pool), size=policy.invitations(len(pool)), replace=False)
    return Cohort(tuple(pool[int(i)].worker_id for i in picks), target, minimum)


class ParticipantState(StrEnum):
    INVITED = "invited"
    REPORTED = "reported"  # its update is part of the round
    DROPPED = "dropped"  # left, failed, or its lease expired
    STRAGGLER = "straggler"  # reported after the round had what it needed, or not at all
    REJECTED = "rejected"  # its update failed validation


class RoundStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"  # enough reports: aggregate
    FAILED = "failed"  # the deadline passed with fewer than min_reports


class ReportDecision(StrEnum):
    ACCEPT = "accept"  # fold this update
    LATE = "late"  # round closed or target met: do not fold (async mode may, with staleness)
    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"  # not invited to this round


@dataclass
class SyncRound:
    """The state machine of one synchronous round.

    invited → reported | dropped | rejected | straggler. The round closes when the target is
    met, or at the deadline with at least ``min_reports``, or early when every invitee has
    answered; it fails at the deadline (or when everyone answered) below ``min_reports``. On
    close, invitees still out become stragglers.
    """

    round_number: int
    target: int
    min_reports: int
    started_at: float
    deadline_at: float
    participants: dict[str, ParticipantState] = field(default_factory=dict)
    status: RoundStatus = RoundStatus.OPEN
    closed_at: float | None = None
    reasons: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(
        cls, cohort: Cohort, *, round_number: int, now: float, deadline_seconds: float
    ) -> SyncRound:
        """A new open round with every cohort member invited."""
        return cls(
            round_number=round_number,
            target=cohort.target,
            min_reports=cohort.min_reports,
            started_at=now,
            deadline_at=now + deadline_seconds,
            participants=dict.fromkeys(cohort.invited, ParticipantState.INVITED),
        )

    def count(self, state: ParticipantState) -> int:
        return sum(1 for s in self.participants.values() if s == state)

    @property
    def reported(self) -> int:
        return self.count(ParticipantState.REPORTED)

    def report(self, worker_id: str, *, now: float) -> ReportDecision:
        """A worker's update arrived (validated by the caller): fold it or not?"""
        state = self.participants.get(worker_id)
        if state is None:
            return ReportDecision.UNKNOWN
        if state == ParticipantState.REPORTED:
            return ReportDecision.DUPLICATE
        if state != ParticipantState.INVITED:  # dropped, rejected or already a straggler
            return ReportDecision.LATE
        if (
            self.status != RoundStatus.OPEN
            or now > self.deadline_at
            or self.reported >= self.target
        ):
            self.participants[worker_id] = ParticipantState.STRAGGLER
            return ReportDecision.LATE
        self.participants[worker_id] = ParticipantState.REPORTED
        return ReportDecision.ACCEPT

    def drop(self, worker_id: str, *, reason: str = "left") -> None:
        """An invitee left or its lease expired before reporting."""
        if self.participants.get(worker_id) == ParticipantState.INVITED:
            self.participants[worker_id] = ParticipantState.DROPPED
            self.reasons[worker_id] = reason

    def reject(self, worker_id: str, *, reason: str) -> None:
        """An update failed validation: the report does not count (undoes an ACCEPT)."""
        if worker_id in self.participants:
            self.participants[worker_id] = ParticipantState.REJECTED
            self.reasons[worker_id] = reason

    def should_close(self, *, now: float) -> bool:
        """Whether the policy closes (or fails) the round at ``now``."""
        if self.status != RoundStatus.OPEN:
            return False
        outstanding = self.count(ParticipantState.INVITED)
        return self.reported >= self.target or now >= self.deadline_at or outstanding == 0

    def close(self, *, now: float) -> RoundStatus:
        """Close: CLOSED with ≥ min_reports, else FAILED; invitees still out are stragglers."""
        if self.status == RoundStatus.OPEN:
            for worker_id, state in self.participants.items():
                if state == ParticipantState.INVITED:
                    self.participants[worker_id] = ParticipantState.STRAGGLER
            enough = self.reported >= max(1, self.min_reports)
            self.status = RoundStatus.CLOSED if enough else RoundStatus.FAILED
            self.closed_at = now
        return self.status

    def to_json(self) -> str:
        """The round's state as JSON (for the round row; ``from_json`` resumes it)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SyncRound:
        data = json.loads(text)
        data["participants"] = {k: ParticipantState(v) for k, v in data["participants"].items()}
        data["status"] = RoundStatus(data["status"])
        return cls(**data)
