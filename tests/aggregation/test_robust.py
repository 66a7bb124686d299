"""Robust aggregation: literal cases, direct numpy on random data, memmapped spills, blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.aggregation import (
    RejectionCode,
    UpdateRejected,
    UpdateSpill,
    coordinate_median,
    krum_scores,
    multi_krum,
    multi_krum_select,
    norm_bounded_mean,
    pairwise_squared_distances,
    trimmed_mean,
)

f32 = np.float32
BLOCKS = [1, 7, 64, 1 << 16]


def random_updates(n: int = 11, dimension: int = 300, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dimension)).astype(f32)


def test_median_and_trimmed_mean_literal():
    updates = np.array([[1, 10], [2, 20], [3, 30], [100, -50]], dtype=f32)
    np.testing.assert_array_equal(coordinate_median(updates), np.array([2.5, 15], dtype=f32))
    # beta 0.25 of 4 drops one value at each end per coordinate
    np.testing.assert_array_equal(trimmed_mean(updates, beta=0.25), np.array([2.5, 15], dtype=f32))
    np.testing.assert_allclose(trimmed_mean(updates, beta=0.0), updates.mean(axis=0))


@pytest.mark.parametrize("block", BLOCKS)
def test_median_matches_direct_numpy(block):
    updates = random_updates()
    expected = np.median(updates.astype(np.float64), axis=0).astype(f32)
    np.testing.assert_array_equal(coordinate_median(updates, block_coordinates=block), expected)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.3, 0.45])
def test_trimmed_mean_matches_direct_numpy(block, beta):
    updates = random_updates()
    cut = int(beta * len(updates))
    ordered = np.sort(updates.astype(np.float64), axis=0)
    expected = ordered[cut : len(updates) - cut].mean(axis=0).astype(f32)
    ours = trimmed_mean(updates, beta=beta, block_coordinates=block)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)


def test_trimmed_mean_rejects_half():
    with pytest.raises(ValueError, match="beta"):
        trimmed_mean(random_updates(), beta=0.5)


@pytest.mark.parametrize("block", BLOCKS)
def test_pairwise_distances_match_direct_numpy(block):
    updates = random_updates()
    direct = ((updates[:, None, :].astype(np.float64) - updates[None, :, :]) ** 2).sum(axis=2)
    ours = pairwise_squared_distances(updates, block_coordinates=block)
    np.testing.assert_allclose(ours, direct, rtol=1e-9, atol=1e-9)
    assert np.all(np.diag(ours) == 0.0)


def test_krum_literal():
    # four honest points on a line and one far away; f = 1 → each score sums n - f - 2 = 2
    updates = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]], dtype=f32)
    scores = krum_scores(pairwise_squared_distances(updates), byzantine=1)
    np.testing.assert_array_equal(scores, [1 + 4, 1 + 1, 1 + 1, 1 + 4, 97**2 + 98**2])
    np.testing.assert_array_equal(multi_krum(updates, byzantine=1), np.array([1.0], dtype=f32))
    np.testing.assert_array_equal(multi_krum_select(updates, byzantine=1, selected=3), [1, 2, 0])
    np.testing.assert_array_equal(
        multi_krum(updates, byzantine=1, selected=2), np.array([1.5], dtype=f32)
    )


def test_multi_krum_matches_direct_numpy():
    updates = random_updates(n=9)
    updates[4] += 10.0
    weights = np.arange(1, 10, dtype=np.float64)
    distances = ((updates[:, None, :].astype(np.float64) - updates[None, :, :]) ** 2).sum(axis=2)
    closest = 9 - 2 - 2
    scores = np.array(
        [np.sort(np.delete(row, i))[:closest].sum() for i, row in enumerate(distances)]
    )
    best = np.argsort(scores)[:3]
    expected = np.average(updates[best].astype(np.float64), axis=0, weights=weights[best])
    ours = multi_krum(updates, byzantine=2, selected=3, weights=weights, block_coordinates=50)
    np.testing.assert_allclose(ours, expected.astype(f32), rtol=1e-6, atol=1e-7)
    assert 4 not in best


def test_norm_bounded_mean_literal():
    updates = np.array([[3, 4], [0.3, 0.4]], dtype=f32)  # norms 5 and 0.5
    # bound 1: the first is scaled to (0.6, 0.8), the second kept
    np.testing.assert_allclose(norm_bounded_mean(updates, bound=1.0), [0.45, 0.6], rtol=1e-6)
    np.testing.assert_allclose(
        norm_bounded_mean(updates, bound=1.0, weights=np.array([1.0, 3.0])),
        [(0.6 + 0.9) / 4, (0.8 + 1.2) / 4],
        rtol=1e-6,
    )


@pytest.mark.parametrize("block", BLOCKS)
def test_norm_bounded_mean_matches_direct_numpy(block):
    updates = random_updates() * np.arange(1, 12, dtype=f32)[:, None]
    norms = np.linalg.norm(updates.astype(np.float64), axis=1)
    clipped = updates * np.minimum(1.0, 20.0 / norms)[:, None]
    ours = norm_bounded_mean(updates, bound=20.0, block_coordinates=block)
    np.testing.assert_allclose(ours, clipped.mean(axis=0).astype(f32), rtol=1e-6, atol=1e-7)


def test_spill_memmap_gives_the_same_results_and_survives_a_restart(tmp_path):
    updates = random_updates(n=8, dimension=1000)
    spill = UpdateSpill(tmp_path / "round.npy", dimension=1000, capacity=10)
    for index, update in enumerate(updates[:5]):
        assert spill.append(f"u{index}", update, 1.0 + index)
    assert not spill.append("u0", updates[0], 1.0)
    spill.flush()
    # given a restart: the spill is reopened from disk, and the rest arrives in chunks
    reopened = UpdateSpill.open(tmp_path / "round.npy")
    assert reopened.ids == ["u0", "u1", "u2", "u3", "u4"]
    for index, update in enumerate(updates[5:], start=5):
        raw = update.tobytes()
        reopened.append_chunks(
            f"u{index}", (raw[i : i + 400] for i in range(0, len(raw), 400)), 1.0
        )
    stored = reopened.updates
    assert isinstance(stored.base, np.memmap) or isinstance(stored, np.memmap)
    np.testing.assert_array_equal(np.asarray(stored), updates)
    # then every rule over the memmap equals the rule over the in-memory array
    np.testing.assert_array_equal(
        coordinate_median(stored, block_coordinates=128), coordinate_median(updates)
    )
    np.testing.assert_array_equal(
        trimmed_mean(stored, beta=0.2, block_coordinates=128), trimmed_mean(updates, beta=0.2)
    )
    np.testing.assert_array_equal(
        multi_krum(stored, byzantine=1, selected=3), multi_krum(updates, byzantine=1, selected=3)
    )
    np.testing.assert_allclose(
        norm_bounded_mean(stored, bound=5.0, weights=np.array(reopened.weights)),
        norm_bounded_mean(updates, bound=5.0, weights=np.array(reopened.weights)),
        rtol=1e-6,
    )


def test_spill_rejected_chunks_leave_no_row(tmp_path):
    spill = UpdateSpill(tmp_path / "round.npy", dimension=4, capacity=2)
    bad = np.array([1, np.nan, 3, 4], dtype=f32).tobytes()
    with pytest.raises(UpdateRejected) as raised:
        spill.append_chunks("bad", [bad[:8], bad[8:]], 1.0)
    assert raised.value.code == RejectionCode.NON_FINITE
    assert len(spill) == 0
    spill.append("a", np.ones(4, dtype=f32), 1.0)
    spill.append("b", np.ones(4, dtype=f32), 1.0)
    with pytest.raises(UpdateRejected, match="full"):
        spill.append("c", np.ones(4, dtype=f32), 1.0)


@pytest.mark.parametrize("dimension", [1, 40])  # one column: its transpose is contiguous
def test_robust_rules_never_mutate_inputs(dimension):
    updates = random_updates(n=6, dimension=dimension)
    kept = updates.copy()
    coordinate_median(updates, block_coordinates=8)
    trimmed_mean(updates, beta=0.2, block_coordinates=8)
    multi_krum(updates, byzantine=1, selected=2, block_coordinates=8)
    norm_bounded_mean(updates, bound=1.0, block_coordinates=8)
    np.testing.assert_array_equal(updates, kept)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.integers(3, 12),
    st.integers(1, 50),
    st.integers(0, 2**32 - 1),
    st.randoms(use_true_random=False),
)
def test_robust_rules_ignore_the_order_of_updates(n, dimension, seed, random):
    updates = np.random.default_rng(seed).normal(size=(n, dimension)).astype(f32)
    order = list(range(n))
    random.shuffle(order)
    shuffled = updates[order]
    np.testing.assert_array_equal(coordinate_median(shuffled), coordinate_median(updates))
    # the kept values are the same, but their summation order may differ
    np.testing.assert_allclose(
        trimmed_mean(shuffled, beta=0.2), trimmed_mean(updates, beta=0.2), rtol=1e-6, atol=1e-7
    )
    # Krum's scores follow their updates; the pick may differ only between tied scores
    # (mutual nearest neighbours tie whenever n - f - 2 = 1)
    byzantine = max(0, (n - 3) // 2)
    scores = krum_scores(pairwise_squared_distances(updates), byzantine=byzantine)
    shuffled_scores = krum_scores(pairwise_squared_distances(shuffled), byzantine=byzantine)
    np.testing.assert_allclose(shuffled_scores, scores[order], rtol=1e-9)
    picked = multi_krum(shuffled, byzantine=byzantine)
    best = np.flatnonzero(np.isclose(scores, scores.min(), rtol=1e-9))
    assert any(np.array_equal(picked, updates[index]) for index in best)
    np.testing.assert_allclose(
        norm_bounded_mean(shuffled, bound=2.0),
        norm_bounded_mean(updates, bound=2.0),
        rtol=1e-6,
        atol=1e-7,
    )
