"""The load generator's merge of its processes' timings (``bench/swarm.py``): pure functions."""

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def swarm(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import swarm

    return swarm


def report(*, welcomed, frames, turnaround=(), credits=(), events=None, lags=()):
    return {
        "welcomed": welcomed,
        "frames": frames,
        "turnaround": list(turnaround),
        "credits": list(credits),
        "events": events or {},
        "lags": list(lags),
    }


def test_merge_reports_joins_children_on_one_clock(swarm):
    # given two children's reports on the wall clock, the start request sent at 100.0
    first = report(
        welcomed={0: 90.0, 1: 90.1},
        frames={0: [100.25], 1: [100.5]},
        turnaround=[(103.0, 0.5), (101.0, 0.25)],
        credits=[102.0],
        events={"assign": 2, "welcome": 2},
        lags=[(99.0, 0.9), (100.1, 0.002), (100.2, 0.004), (107.0, 0.8)],
    )
    second = report(
        welcomed={2: 90.2},
        frames={2: [100.75]},
        turnaround=[(102.0, 0.125)],
        credits=[101.5, 101.5],
        events={"assign": 1, "welcome": 1, "credit": 1},
        lags=[(100.3, 0.05)],
    )

    # when they are merged, with the lag of interest between 100 and 105
    merged = swarm.merge_reports([first, second], t0=100.0, lag_window=(100.0, 105.0))

    # then first frames are seconds after the start, by client, and samples sorted by time
    assert merged["welcomed"] == 3
    assert merged["first_frame_s"] == {0: 0.25, 1: 0.5, 2: 0.75}
    assert merged["turnaround"] == [(101.0, 0.25), (102.0, 0.125), (103.0, 0.5)]
    assert merged["credits"] == [101.5, 101.5, 102.0]
    assert merged["events"] == {"assign": 3, "welcome": 3, "credit": 1}
    # lag outside the window (0.9 s before the start, 0.8 s after) is left out; p99 is the
    # worst process's
    lag = merged["loop_lag_ms"]
    assert [p["samples"] for p in lag["per_process"]] == [2, 1]
    assert lag["per_process"][0]["p99"] == pytest.approx(4.0)
    assert lag["p99"] == pytest.approx(50.0)
    assert lag["max"] == pytest.approx(50.0)


def test_merge_reports_without_lag_samples_reports_none(swarm):
    merged = swarm.merge_reports([report(welcomed={}, frames={})], t0=0.0, lag_window=(0.0, 1.0))

    assert merged["welcomed"] == 0
    assert merged["first_frame_s"] == {}
    assert merged["loop_lag_ms"]["p99"] is None
    assert merged["loop_lag_ms"]["max"] is None


def test_round_latencies_match_each_clients_kth_frame_to_the_kth_trigger(swarm):
    frames = {0: [10.5, 20.25], 1: [10.75], 2: [11.0, 20.5]}

    rounds = swarm.round_latencies(frames, [10.0, 20.0])

    # client 1's second frame never came: left out of round 2, not counted as zero
    assert rounds == [[0.5, 0.75, 1.0], [0.25, 0.5]]


def test_shares_cut_contiguous_parts_with_their_first_index(swarm):
    assert swarm.shares(list("abcdefg"), 3) == [(0, list("abc")), (3, list("def")), (6, ["g"])]
    assert swarm.shares(list("ab"), 4) == [(0, ["a"]), (1, ["b"])]


@pytest.mark.parametrize(("connections", "processes"), [(1, 1), (499, 1), (500, 4), (10_000, 4)])
def test_default_swarm_procs(swarm, connections, processes):
    assert swarm.default_swarm_procs(connections) == processes
