"""The validation decision of a federated computing task, as a pure function.

Given the replicas that returned a result and the task's replication state, :func:`quorum_decide`
says what happens next. It knows nothing of Django, rows or locks: ``jobs.dispatch.results``
loads the replicas under the task's row lock, asks, and applies the decision.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReturnedReplica:
    """One replica that returned a result: its id, the SHA-256 of its output, who computed it."""

    id: Hashable
    sha256: str
    worker_id: Hashable = None
    contributor_id: Hashable = None


class Verdict(enum.StrEnum):
    CANONICAL = "canonical"  # a quorum (or the known answer) agrees: the task is validated
    WAIT = "wait"  # live replicas have not all reported yet
    NEED_REPLICA = "need_replica"  # every replica reported, no agreement: raise the target by one
    FAIL = "fail"  # no agreement and the replica cap is reached
    KNOWN_ANSWER_FAILED = "known_answer_failed"  # these replicas got a known-answer task wrong


@dataclass(frozen=True, slots=True)
class QuorumDecision:
    """What to do with a task. ``winners`` agree with ``canonical_sha256``; ``losers`` do not.

    ``target_replicas`` is the task's replica target after the decision (raised by one on
    ``NEED_REPLICA``, unchanged otherwise)."""

    verdict: Verdict
    target_replicas: int
    canonical_sha256: str = ""
    winners: tuple[ReturnedReplica, ...] = ()
    losers: tuple[ReturnedReplica, ...] = ()
    reason: str = ""


def quorum_decide(
    *,
    returned: Sequence[ReturnedReplica],
    target_replicas: int,
    quorum: int,
    known_answer_sha256: str = "",
    active_replicas: int,
    max_replicas: int,
) -> QuorumDecision:
    """Decide a task from its returned replicas.

    - A known-answer task is canonical as soon as one replica matches the server's hash; replicas
      that differ (while none matches) failed the check and are named so the task goes elsewhere.
    - Otherwise ``quorum`` equal hashes make the canonical result (one, when adaptive replication
      trusted a worker alone: ``target_replicas == 1``). The largest group wins; ties go to the
      group whose first replica returned first.
    - Without agreement, once every live replica (``active_replicas``) has reported and at least
      ``target_replicas`` have, one more replica is needed, up to ``max_replicas``; then it fails.
    """
    groups: dict[str, list[ReturnedReplica]] = {}
    for replica in returned:
        groups.setdefault(replica.sha256, []).append(replica)

    def canonical(digest: str) -> QuorumDecision:
        return QuorumDecision(
            verdict=Verdict.CANONICAL,
            target_replicas=target_replicas,
            canonical_sha256=digest,
            winners=tuple(groups[digest]),
            losers=tuple(r for r in returned if r.sha256 != digest),
        )

    if known_answer_sha256:
        if known_answer_sha256 in groups:
            return canonical(known_answer_sha256)
        if returned:
            return QuorumDecision(
                verdict=Verdict.KNOWN_ANSWER_FAILED,
                target_replicas=target_replicas,
                losers=tuple(returned),
                reason="known answer mismatch",
            )
    else:
        needed = 1 if target_replicas == 1 else quorum
        if groups:
            # max() keeps the first of equal groups, and dicts keep arrival order.
            digest, members = max(groups.items(), key=lambda item: len(item[1]))
            if len(members) >= needed:
                return canonical(digest)

    all_reported = len(returned) >= active_replicas
    if all_reported and len(returned) >= target_replicas:
        if target_replicas < max_replicas:
            return QuorumDecision(verdict=Verdict.NEED_REPLICA, target_replicas=target_replicas + 1)
        return QuorumDecision(
            verdict=Verdict.FAIL,
            target_replicas=target_replicas,
            losers=tuple(returned),
            reason=f"no {quorum} of {len(returned)} replicas agreed",
        )
    return QuorumDecision(verdict=Verdict.WAIT, target_replicas=target_replicas)
