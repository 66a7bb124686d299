"""The validation decision as a literal table: returned replicas in, a frozen decision out."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.quorum import ReturnedReplica, Verdict, quorum_decide

A, B, C, K = "a" * 64, "b" * 64, "c" * 64, "k" * 64


def replicas(*hashes: str) -> list[ReturnedReplica]:
    """Replicas r1, r2, ... in arrival order, each from its own worker and contributor."""
    return [
        ReturnedReplica(id=f"r{i}", sha256=h, worker_id=f"w{i}", contributor_id=f"c{i}")
        for i, h in enumerate(hashes, start=1)
    ]


# returned hashes, target, quorum, known answer, active, max
#   -> verdict, target after, canonical, winner ids, loser ids
CASES = [
    # agreement
    ((A, A), 2, 2, "", 2, 10, Verdict.CANONICAL, 2, A, "r1 r2", ""),
    ((A, A, A), 3, 3, "", 3, 10, Verdict.CANONICAL, 3, A, "r1 r2 r3", ""),
    ((A, B, A), 3, 2, "", 3, 10, Verdict.CANONICAL, 3, A, "r1 r3", "r2"),
    ((B, A, A, B, A), 5, 3, "", 5, 10, Verdict.CANONICAL, 5, A, "r2 r3 r5", "r1 r4"),
    # quorum 1: the first result is canonical
    ((A,), 1, 1, "", 1, 5, Verdict.CANONICAL, 1, A, "r1", ""),
    # partial reports: replicas still running, wait for them
    ((), 2, 2, "", 2, 10, Verdict.WAIT, 2, "", "", ""),
    ((A,), 2, 2, "", 2, 10, Verdict.WAIT, 2, "", "", ""),
    ((A, B), 3, 2, "", 3, 10, Verdict.WAIT, 3, "", "", ""),
    # an expired replica came back, so more replicas are live than the target: wait for all
    ((A, B), 2, 2, "", 3, 10, Verdict.WAIT, 2, "", "", ""),
    # disagreement with every live replica reported: one more replica
    ((A, B), 2, 2, "", 2, 10, Verdict.NEED_REPLICA, 3, "", "", ""),
    ((A, B, C), 3, 2, "", 3, 10, Verdict.NEED_REPLICA, 4, "", "", ""),
    # a replica that errored or expired left fewer reports than the target: wait for a new one
    ((A,), 2, 2, "", 1, 10, Verdict.WAIT, 2, "", "", ""),
    # cap reached: fail, every returned replica loses
    ((A, B), 2, 2, "", 2, 2, Verdict.FAIL, 2, "", "", "r1 r2"),
    ((A, B, C, A), 4, 3, "", 4, 4, Verdict.FAIL, 4, "", "", "r1 r2 r3 r4"),
    # trusted single replica (adaptive replication set the target to 1): one result decides
    ((B,), 1, 2, "", 1, 10, Verdict.CANONICAL, 1, B, "r1", ""),
    # known answers: one match is enough; mismatches lose
    ((K,), 1, 2, K, 1, 10, Verdict.CANONICAL, 1, K, "r1", ""),
    ((A, K), 2, 2, K, 2, 10, Verdict.CANONICAL, 2, K, "r2", "r1"),
    ((A,), 1, 2, K, 1, 10, Verdict.KNOWN_ANSWER_FAILED, 1, "", "", "r1"),
    ((A, B), 2, 2, K, 2, 10, Verdict.KNOWN_ANSWER_FAILED, 2, "", "", "r1 r2"),
    # agreeing workers do not outvote the known answer
    ((A, A, A), 3, 2, K, 3, 10, Verdict.KNOWN_ANSWER_FAILED, 3, "", "", "r1 r2 r3"),
    ((), 1, 2, K, 1, 10, Verdict.WAIT, 1, "", "", ""),
]


@pytest.mark.parametrize(
    ("hashes", "target", "quorum", "known", "active", "cap", "verdict", "target_after",
     "canonical", "winners", "losers"),
    CASES,
)  # fmt: skip
def test_quorum_decide_table(  # noqa: PLR0913 - one argument per column of the table
    hashes, target, quorum, known, active, cap, verdict, target_after, canonical, winners, losers
):
    decision = quorum_decide(
        returned=replicas(*hashes),
        target_replicas=target,
        quorum=quorum,
        known_answer_sha256=known,
        active_replicas=active,
        max_replicas=cap,
    )
    assert decision.verdict == verdict
    assert decision.target_replicas == target_after
    assert decision.canonical_sha256 == canonical
    assert [r.id for r in decision.winners] == winners.split()
    assert [r.id for r in decision.losers] == losers.split()


def test_fail_says_why():
    decision = quorum_decide(
        returned=replicas(A, B, C),
        target_replicas=3,
        quorum=2,
        active_replicas=3,
        max_replicas=3,
    )
    assert decision.reason == "no 2 of 3 replicas agreed"


def test_winners_keep_who_computed_them():
    (winner,) = quorum_decide(
        returned=replicas(A), target_replicas=1, quorum=2, active_replicas=1, max_replicas=5
    ).winners
    assert (winner.worker_id, winner.contributor_id) == ("w1", "c1")


def test_decision_is_frozen_and_inputs_untouched():
    returned = replicas(A, A)
    decision = quorum_decide(
        returned=returned, target_replicas=2, quorum=2, active_replicas=2, max_replicas=4
    )
    with pytest.raises(AttributeError):
        decision.verdict = Verdict.FAIL  # type: ignore[misc]
    assert returned == replicas(A, A)


def test_quorum_module_does_not_load_django():
    code = "import sys, jobs.quorum, jobs.manifest; print('django' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


@given(
    hashes=st.lists(st.sampled_from([A, B, C]), max_size=8),
    quorum=st.integers(1, 4),
    extra_target=st.integers(0, 4),
    extra_active=st.integers(0, 3),
    extra_cap=st.integers(0, 6),
    known=st.sampled_from(["", A, K]),
)
def test_quorum_decide_invariants(hashes, quorum, extra_target, extra_active, extra_cap, known):
    # given any returned replicas and a consistent replication state
    target = quorum + extra_target
    cap = target + extra_cap
    returned = replicas(*hashes)
    decision = quorum_decide(
        returned=returned,
        target_replicas=target,
        quorum=quorum,
        known_answer_sha256=known,
        active_replicas=len(returned) + extra_active,
        max_replicas=cap,
    )
    # then winners and losers are distinct returned replicas, winners agree on the canonical hash
    named = [r.id for r in decision.winners + decision.losers]
    assert len(named) == len(set(named))
    assert set(named) <= {r.id for r in returned}
    assert all(r.sha256 == decision.canonical_sha256 for r in decision.winners)
    assert all(r.sha256 != decision.canonical_sha256 for r in decision.losers)
    # a canonical result needs a quorum (or the known answer); the target never passes the cap
    if decision.verdict == Verdict.CANONICAL:
        assert len(decision.winners) >= (1 if known else quorum)
        assert not known or decision.canonical_sha256 == known
        assert len(decision.winners) + len(decision.losers) == len(returned)
    assert decision.target_replicas <= max(cap, target)
    if decision.verdict == Verdict.NEED_REPLICA:
        assert decision.target_replicas == target + 1 <= cap
    # and a replica still running always means waiting rather than giving up
    if extra_active and decision.verdict != Verdict.CANONICAL:
        assert decision.verdict in (Verdict.WAIT, Verdict.KNOWN_ANSWER_FAILED)
