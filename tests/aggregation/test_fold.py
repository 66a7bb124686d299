"""Streaming FedAvg fold: literal cases, invariants (hypothesis), chunks, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.aggregation import RejectionCode, StreamingFold, UpdateRejected, weighted_mean

f32 = np.float32
# derandomize: the same examples on every run, so a failure reproduces and CI never flakes
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True)


def chunks_of(update: np.ndarray, values_per_chunk: int):
    raw = update.astype("<f4").tobytes()
    step = 4 * values_per_chunk
    return lambda: (raw[i : i + step] for i in range(0, len(raw), step))


def test_weighted_mean_literal():
    # given two updates with 1 and 3 examples (Flower's aggregate() test, flattened)
    first = np.array([1, 2, 3, 4, 5, 6], dtype=f32)
    second = np.array([7, 8, 9, 10, 11, 12], dtype=f32)
    # when folded
    result = weighted_mean([(first, 1), (second, 3)])
    # then (1·a + 3·b) / 4
    np.testing.assert_array_equal(result, np.array([5.5, 6.5, 7.5, 8.5, 9.5, 10.5], dtype=f32))
    assert result.dtype == f32


def test_fold_is_idempotent_per_update_id():
    fold = StreamingFold(3)
    assert fold.fold("a", np.array([1, 1, 1], dtype=f32), 1.0)
    # when a retried task folds the same update id again (even with other values)
    assert not fold.fold("a", np.array([9, 9, 9], dtype=f32), 5.0)
    fold.fold("b", np.array([3, 3, 3], dtype=f32), 1.0)
    # then it counted once
    assert (fold.count, fold.total_weight) == (2, 2.0)
    np.testing.assert_array_equal(fold.finish(), np.array([2, 2, 2], dtype=f32))


def test_fold_never_mutates_the_update():
    update = np.array([1.5, -2.0], dtype=f32)
    before = update.copy()
    StreamingFold(2).fold("a", update, 3.0)
    np.testing.assert_array_equal(update, before)


def test_rejected_update_leaves_the_fold_untouched():
    fold = StreamingFold(3)
    fold.fold("good", np.array([1, 2, 3], dtype=f32), 1.0)
    snapshot = fold.checkpoint()
    for update_id, update, weight, code in [
        ("nan", np.array([1, np.nan, 3], dtype=f32), 1.0, RejectionCode.NON_FINITE),
        ("big", np.array([100, 0, 0], dtype=f32), 1.0, RejectionCode.NORM_EXCEEDED),
        ("short", np.array([1, 2], dtype=f32), 1.0, RejectionCode.WRONG_LENGTH),
        ("zero-weight", np.array([1, 2, 3], dtype=f32), 0.0, RejectionCode.BAD_WEIGHT),
    ]:
        with pytest.raises(UpdateRejected) as raised:
            fold.fold(update_id, update, weight, max_norm=10.0)
        assert raised.value.code == code
    assert fold.checkpoint() == snapshot
    assert not fold.has_folded("nan")


def test_finish_without_updates_raises():
    with pytest.raises(ValueError, match="no update"):
        StreamingFold(4).finish()


def test_fold_chunks_equals_fold_and_holds_one_chunk():
    rng = np.random.default_rng(1)
    updates = rng.normal(size=(5, 1000)).astype(f32)
    whole, chunked = StreamingFold(1000), StreamingFold(1000)
    for index, update in enumerate(updates):
        whole.fold(str(index), update, index + 1.0)
        chunked.fold_chunks(str(index), chunks_of(update, 96), index + 1.0)  # last chunk short
    np.testing.assert_array_equal(whole.finish(), chunked.finish())
    assert not chunked.fold_chunks("0", chunks_of(updates[0], 96), 1.0)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (np.array([1, 2, np.inf, 4], dtype=f32).tobytes(), RejectionCode.NON_FINITE),
        (np.array([1, 2, 3], dtype=f32).tobytes(), RejectionCode.WRONG_LENGTH),
        (np.array([1, 2, 3, 4, 5], dtype=f32).tobytes(), RejectionCode.WRONG_LENGTH),
        (np.array([1, 2, 3, 4], dtype=f32).tobytes()[:-1], RejectionCode.MALFORMED),
    ],
)
def test_fold_chunks_rejects_before_adding(raw, code):
    fold = StreamingFold(4)
    with pytest.raises(UpdateRejected) as raised:
        fold.fold_chunks("x", lambda: (raw[i : i + 8] for i in range(0, len(raw), 8)), 1.0)
    assert raised.value.code == code
    assert fold.count == 0
    assert not fold.weighted_sum().any()


def test_fold_sparse_equals_dense():
    dense, sparse = StreamingFold(6), StreamingFold(6)
    indices = np.array([0, 4], dtype=np.uint32)
    values = np.array([2.0, -1.0], dtype=f32)
    sparse.fold_sparse("a", indices, values, 2.0)
    dense.fold("a", np.array([2, 0, 0, 0, -1, 0], dtype=f32), 2.0)
    np.testing.assert_array_equal(sparse.finish(), dense.finish())
    for bad_indices in (np.array([4, 0], dtype=np.uint32), np.array([-1, 2]), np.array([1, 6])):
        with pytest.raises(UpdateRejected):
            sparse.fold_sparse("b", bad_indices, values, 1.0)
    assert sparse.count == 1


def test_checkpoint_rejects_torn_or_altered_bytes():
    fold = StreamingFold(8)
    fold.fold("a", np.arange(8, dtype=f32), 2.0)
    data = fold.checkpoint()
    with pytest.raises(ValueError, match="bytes"):
        StreamingFold.restore(data[:-5])
    altered = bytearray(data)
    altered[-40] ^= 1
    with pytest.raises(ValueError, match="digest"):
        StreamingFold.restore(bytes(altered))


def test_checkpoint_to_a_file_object():
    fold = StreamingFold(5)
    fold.fold("a", np.ones(5, dtype=f32), 1.0)
    buffer = io.BytesIO()
    assert fold.checkpoint(buffer) is None
    buffer.seek(0)
    restored = StreamingFold.restore(buffer)
    assert restored.folded_ids == {"a"}
    np.testing.assert_array_equal(restored.finish(), fold.finish())


# Invariants --------------------------------------------------------------------------------

rounds = st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.tuples(
        st.integers(min_value=1, max_value=40),  # dimension
        st.lists(st.floats(0.1, 1000.0), min_size=n, max_size=n),  # weights
        st.integers(0, 2**32 - 1),  # seed for the update values
    )
)


def make_updates(dimension: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(count, dimension)) * rng.uniform(0.01, 100)).astype(f32)


def fold_all(updates, weights, order) -> StreamingFold:
    fold = StreamingFold(updates.shape[1])
    for index in order:
        fold.fold(f"u{index}", updates[index], weights[index])
    return fold


@PROPERTY
@given(rounds, st.randoms(use_true_random=False))
def test_fold_order_does_not_matter(case, random):
    dimension, weights, seed = case
    updates = make_updates(dimension, len(weights), seed)
    order = list(range(len(weights)))
    random.shuffle(order)
    straight = fold_all(updates, weights, range(len(weights))).finish()
    shuffled = fold_all(updates, weights, order).finish()
    scale = np.abs(updates).max()
    np.testing.assert_allclose(shuffled, straight, rtol=1e-6, atol=1e-6 * scale)


@PROPERTY
@given(rounds, st.data())
def test_checkpoint_restore_equals_uninterrupted(case, data):
    dimension, weights, seed = case
    updates = make_updates(dimension, len(weights), seed)
    stop = data.draw(st.integers(0, len(weights)))
    # given a fold interrupted after `stop` updates, checkpointed and restored
    interrupted = fold_all(updates, weights, range(stop))
    resumed = StreamingFold.restore(interrupted.checkpoint())
    # when the retried task refolds everything (the first `stop` are skipped as duplicates)
    for index in range(len(weights)):
        resumed.fold(f"u{index}", updates[index], weights[index])
    uninterrupted = fold_all(updates, weights, range(len(weights)))
    # then the state is bit for bit the uninterrupted one
    assert resumed.checkpoint() == uninterrupted.checkpoint()


@PROPERTY
@given(rounds, st.floats(0.01, 100.0))
def test_scaling_every_weight_keeps_the_mean(case, factor):
    dimension, weights, seed = case
    updates = make_updates(dimension, len(weights), seed)
    base = fold_all(updates, weights, range(len(weights))).finish()
    scaled = fold_all(updates, [w * factor for w in weights], range(len(weights))).finish()
    np.testing.assert_allclose(scaled, base, rtol=1e-6, atol=1e-6 * np.abs(updates).max())


@PROPERTY
@given(rounds)
def test_fold_equals_direct_numpy_weighted_mean(case):
    dimension, weights, seed = case
    updates = make_updates(dimension, len(weights), seed)
    expected = np.average(updates.astype(np.float64), axis=0, weights=weights)
    ours = fold_all(updates, weights, range(len(weights))).finish()
    np.testing.assert_allclose(
        ours, expected.astype(f32), rtol=1e-6, atol=1e-6 * np.abs(updates).max()
    )


@PROPERTY
@given(rounds)
def test_mean_stays_within_the_updates_range(case):
    dimension, weights, seed = case
    updates = make_updates(dimension, len(weights), seed)
    mean = fold_all(updates, weights, range(len(weights))).finish()
    assert np.all(mean >= updates.min(axis=0))
    assert np.all(mean <= updates.max(axis=0))


def test_finish_into_a_buffer():
    fold = StreamingFold(3)
    fold.fold("a", np.array([1, 2, 3], dtype=f32), 2.0)
    out = np.zeros(3, dtype=f32)
    assert fold.finish(out=out) is out
    np.testing.assert_array_equal(out, np.array([1, 2, 3], dtype=f32))
    with pytest.raises(ValueError, match="out"):
        fold.finish(out=np.zeros(3, dtype=np.float64))


def test_fold_stream_equals_fold():
    rng = np.random.default_rng(2)
    updates = rng.normal(size=(4, 500)).astype(f32)
    whole, streamed = StreamingFold(500), StreamingFold(500)
    for index, update in enumerate(updates):
        whole.fold(str(index), update, 2.0 + index)
        assert streamed.fold_stream(str(index), chunks_of(update, 64)(), 2.0 + index)
    assert not streamed.fold_stream("0", chunks_of(updates[0], 64)(), 1.0)
    assert streamed.checkpoint() == whole.checkpoint()


def test_fold_stream_rejected_on_its_first_chunk_leaves_the_fold_usable():
    fold = StreamingFold(4)
    bad = np.array([np.nan, 1, 1, 1], dtype=f32).tobytes()
    with pytest.raises(UpdateRejected) as raised:
        fold.fold_stream("bad", [bad[:8], bad[8:]], 1.0)
    assert raised.value.code == RejectionCode.NON_FINITE
    assert fold.fold("good", np.ones(4, dtype=f32), 1.0)


@pytest.mark.parametrize(
    ("update", "max_norm", "code"),
    [
        (np.array([1, 1, 1, np.inf], dtype=f32), None, RejectionCode.NON_FINITE),
        (np.array([1, 1, 30, 40], dtype=f32), 10.0, RejectionCode.NORM_EXCEEDED),
        (np.array([1, 1, 1], dtype=f32), None, RejectionCode.WRONG_LENGTH),
    ],
)
def test_fold_stream_failing_midway_damages_the_fold_until_restored(update, max_norm, code):
    # given a fold checkpointed after one good update
    fold = StreamingFold(4)
    fold.fold("good", np.ones(4, dtype=f32), 1.0)
    saved = fold.checkpoint()
    raw = update.tobytes()
    # when a streamed update fails after its first chunk was added
    with pytest.raises(UpdateRejected) as raised:
        fold.fold_stream("bad", [raw[:8], raw[8:]], 1.0, max_norm=max_norm)
    assert raised.value.code == code
    # then the fold refuses every use, and the last checkpoint brings it back
    for use in (fold.finish, fold.checkpoint, lambda: fold.fold("x", np.ones(4, dtype=f32), 1.0)):
        with pytest.raises(RuntimeError, match="damaged"):
            use()
    restored = StreamingFold.restore(saved)
    np.testing.assert_array_equal(restored.finish(), np.ones(4, dtype=f32))


def test_clipped_fold_equals_norm_bounded_mean():
    from jobs.aggregation import norm_bounded_mean

    rng = np.random.default_rng(4)
    updates = (rng.normal(size=(6, 300)) * np.arange(1, 7)[:, None]).astype(f32)
    weights = np.arange(1.0, 7.0)
    whole, chunked = StreamingFold(300), StreamingFold(300)
    for index, update in enumerate(updates):
        whole.fold(str(index), update, weights[index], clip_norm=20.0)
        chunked.fold_chunks(str(index), chunks_of(update, 50), weights[index], clip_norm=20.0)
    expected = norm_bounded_mean(updates, bound=20.0, weights=weights)
    np.testing.assert_allclose(whole.finish(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(chunked.finish(), whole.finish())
    assert whole.total_weight == weights.sum()  # clipping shrinks updates, not their weight


@PROPERTY
@given(rounds, st.data())
def test_refolding_any_subset_changes_nothing(case, data):
    dimension, weights, seed = case
    updates = make_updates(dimension, len(weights), seed)
    fold = fold_all(updates, weights, range(len(weights)))
    before = fold.checkpoint()
    again = data.draw(st.lists(st.integers(0, len(weights) - 1), max_size=2 * len(weights)))
    for index in again:
        assert not fold.fold(f"u{index}", updates[index], weights[index])
    assert fold.checkpoint() == before


def test_fold_sum_keeps_a_float64_total_exact_and_records_each_update_once():
    # given a total no float32 vector holds (2^24 + 1 and a value with 40 significant bits)
    total = np.array([2.0**24 + 1, 1 + 2.0**-40, -3.5], dtype=np.float64)
    fold = StreamingFold(3)
    # when it is folded as the sum of three updates
    assert fold.fold_sum(["a", "b", "c"], total)
    # then the weighted sum is that total, bit for bit, with three updates of weight 1
    assert fold.weighted_sum().tobytes() == total.tobytes()
    assert (fold.count, fold.total_weight, fold.folded_ids) == (3, 3.0, frozenset("abc"))
    # and a second fold naming any of them, or no id, adds nothing
    assert not fold.fold_sum(["c", "d"], total)
    assert not fold.fold_sum([], total)
    assert fold.weighted_sum().tobytes() == total.tobytes()


def test_fold_sum_refuses_a_float32_or_non_finite_total_and_changes_nothing():
    fold = StreamingFold(2)
    with pytest.raises(UpdateRejected):
        fold.fold_sum(["a"], np.ones(2, dtype=np.float32))
    with pytest.raises(UpdateRejected):
        fold.fold_sum(["a"], np.array([1.0, np.inf]))
    assert fold.count == 0
    assert not fold.weighted_sum().any()
