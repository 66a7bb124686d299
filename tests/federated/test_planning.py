import pytest

from jobs.federated.planning import (
    Cohort,
    CohortPolicy,
    NotEnoughWorkers,
    ParticipantState,
    ReportDecision,
    RoundStatus,
    SyncRound,
    WorkerInfo,
    select_cohort,
)


def _workers(n, capabilities=frozenset({"wasm-simd"})):
    return [WorkerInfo(f"w{i:03d}", capabilities) for i in range(n)]


def test_fraction_target_with_over_selection():
    policy = CohortPolicy(fraction=0.1, over_selection=1.3)
    assert policy.target(100) == 10
    assert policy.invitations(100) == 13
    assert policy.target(5) == 1  # at least one
    assert policy.invitations(5) == 2
    assert policy.target(0) == 0


def test_count_is_capped_by_the_eligible():
    policy = CohortPolicy(count=20, over_selection=2.0)
    assert policy.target(8) == 8
    assert policy.invitations(8) == 8


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"count": 1, "fraction": 0.5},
        {"count": 0},
        {"fraction": 1.5},
        {"count": 2, "over_selection": 0.5},
    ],
)
def test_bad_policies_are_refused(kwargs):
    with pytest.raises(ValueError, match="."):
        CohortPolicy(**kwargs)


def test_selection_is_deterministic_distinct_and_respects_capabilities():
    workers = _workers(30) + [WorkerInfo(f"x{i}", frozenset()) for i in range(30)]
    policy = CohortPolicy(
        count=5, over_selection=1.4, required_capabilities=frozenset({"wasm-simd"})
    )
    first = select_cohort(workers, policy, seed=9, round_number=1)
    again = select_cohort(list(reversed(workers)), policy, seed=9, round_number=1)
    later = select_cohort(workers, policy, seed=9, round_number=2)
    assert first == again
    assert first.invited != later.invited
    assert len(first.invited) == 7
    assert len(set(first.invited)) == 7
    assert all(worker_id.startswith("w") for worker_id in first.invited)
    assert (first.target, first.min_reports) == (5, 5)


def test_too_few_eligible_workers():
    policy = CohortPolicy(count=5, min_reports=4, required_capabilities=frozenset({"gpu"}))
    with pytest.raises(NotEnoughWorkers):
        select_cohort(_workers(10), policy, seed=0, round_number=1)


def _round(invited=("a", "b", "c", "d"), target=3, min_reports=2):
    return SyncRound.open(
        Cohort(invited, target, min_reports), round_number=1, now=100.0, deadline_seconds=60.0
    )


def test_round_closes_when_the_target_reports_and_the_rest_are_stragglers():
    state = _round()
    assert state.report("a", now=110.0) == ReportDecision.ACCEPT
    assert state.report("a", now=111.0) == ReportDecision.DUPLICATE
    assert state.report("zz", now=111.0) == ReportDecision.UNKNOWN
    assert not state.should_close(now=115.0)
    state.report("b", now=120.0)
    state.report("c", now=130.0)
    assert state.should_close(now=130.0)
    assert state.close(now=130.0) == RoundStatus.CLOSED
    assert state.participants["d"] == ParticipantState.STRAGGLER
    assert state.report("d", now=131.0) == ReportDecision.LATE
    assert state.reported == 3


def test_round_closes_at_the_deadline_with_the_minimum():
    state = _round()
    state.report("a", now=110.0)
    state.report("b", now=150.0)
    state.drop("c", reason="lease expired")
    assert not state.should_close(now=159.0)
    assert state.should_close(now=160.0)
    assert state.close(now=160.0) == RoundStatus.CLOSED
    assert state.participants["c"] == ParticipantState.DROPPED
    assert state.reasons["c"] == "lease expired"
    assert state.report("c", now=161.0) == ReportDecision.LATE
    assert state.participants["c"] == ParticipantState.DROPPED  # stays a dropout
    assert state.participants["d"] == ParticipantState.STRAGGLER
    assert state.report("d", now=161.0) == ReportDecision.LATE


def test_round_fails_below_the_minimum_and_rejections_do_not_count():
    state = _round()
    state.report("a", now=110.0)
    state.report("b", now=111.0)
    state.reject("b", reason="non_finite")
    state.drop("c")
    state.drop("d")
    assert state.should_close(now=112.0)  # nobody is left to wait for
    assert state.close(now=112.0) == RoundStatus.FAILED
    assert state.participants["b"] == ParticipantState.REJECTED


def test_a_report_after_the_deadline_is_late_even_before_the_close():
    state = _round()
    assert state.report("a", now=170.0) == ReportDecision.LATE
    assert state.participants["a"] == ParticipantState.STRAGGLER


def test_round_state_round_trips_through_json():
    state = _round()
    state.report("a", now=110.0)
    state.drop("b", reason="left")
    restored = SyncRound.from_json(state.to_json())
    assert restored == state
    restored.report("c", now=120.0)
    restored.report("d", now=121.0)
    assert restored.close(now=121.0) == RoundStatus.CLOSED
