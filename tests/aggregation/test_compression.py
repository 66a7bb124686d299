"""Compression: round trips, error bounds, error feedback, majority vote, malformed payloads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.aggregation import (
    RejectionCode,
    SignVote,
    SparseUpdate,
    StreamingFold,
    TopKResidual,
    UpdateRejected,
    int8_decode,
    int8_encode,
    sign_encode,
)

f32 = np.float32
# derandomize: the same examples on every run, so a failure reproduces and CI never flakes
PROPERTY = settings(max_examples=30, deadline=None, derandomize=True)


def test_int8_literal_exact_on_the_grid():
    # values on the quantisation grid (multiples of max/127) decode exactly, whatever the noise
    update = np.array([127, -127, 0, 1, 64], dtype=f32) * f32(0.5)
    payload = int8_encode(update, seed=1, block_size=4)
    assert len(payload) == 16 + 4 * 2 + 5  # header, two block scales, five int8 values
    np.testing.assert_array_equal(int8_decode(payload), update)


@PROPERTY
@given(
    st.integers(1, 3000),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1, 16, 256, 1024]),
    st.floats(1e-6, 1e6),
)
def test_int8_error_is_below_one_step_per_block(dimension, seed, block, magnitude):
    update = (np.random.default_rng(seed).normal(size=dimension) * magnitude).astype(f32)
    decoded = int8_decode(int8_encode(update, seed=seed, block_size=block))
    padded = np.zeros(-(-dimension // block) * block, dtype=f32)
    padded[:dimension] = np.abs(update)
    step = np.repeat(padded.reshape(-1, block).max(axis=1) / 127.0, block)[:dimension]
    assert decoded.dtype == f32
    assert np.all(np.abs(decoded - update) <= step * (1 + 1e-5))


def test_int8_is_deterministic_per_seed_and_unbiased():
    update = np.random.default_rng(0).normal(size=512).astype(f32)
    assert int8_encode(update, seed=7) == int8_encode(update, seed=7)
    assert int8_encode(update, seed=7) != int8_encode(update, seed=8)
    # the mean over many seeds converges on the input (stochastic rounding is unbiased)
    mean = np.mean([int8_decode(int8_encode(update, seed=s)) for s in range(400)], axis=0)
    step = np.abs(update).max() / 127
    assert np.abs(mean - update).max() < 0.25 * step


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda p: p[:10], RejectionCode.MALFORMED),
        (lambda p: b"XX" + p[2:], RejectionCode.MALFORMED),
        (lambda p: p[:-1], RejectionCode.WRONG_LENGTH),
        (
            lambda p: p[:16] + np.array([np.nan], dtype=f32).tobytes() + p[20:],
            RejectionCode.NON_FINITE,
        ),
    ],
)
def test_int8_rejects_malformed_payloads(mangle, code):
    payload = int8_encode(np.ones(10, dtype=f32), seed=0, block_size=16)
    with pytest.raises(UpdateRejected) as raised:
        int8_decode(mangle(payload))
    assert raised.value.code == code


def test_int8_refuses_non_finite_input():
    with pytest.raises(UpdateRejected):
        int8_encode(np.array([1, np.inf], dtype=f32), seed=0)


def test_topk_literal_and_residual():
    residual = TopKResidual(5)
    update = np.array([0.1, -3, 0.2, 2, -0.5], dtype=f32)
    sparse = residual.compress(update, k=2)
    np.testing.assert_array_equal(sparse.indices, [1, 3])
    np.testing.assert_array_equal(sparse.values, np.array([-3, 2], dtype=f32))
    np.testing.assert_array_equal(residual.residual, np.array([0.1, 0, 0.2, 0, -0.5], dtype=f32))
    # the next round sends the carried -0.5 + -0.6 = -1.1 first
    sparse = residual.compress(np.array([0, 0, 0, 0.1, -0.6], dtype=f32), k=1)
    np.testing.assert_array_equal(sparse.indices, [4])
    np.testing.assert_allclose(sparse.values, [-1.1], rtol=1e-6)


@PROPERTY
@given(st.integers(2, 500), st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_topk_error_feedback_loses_nothing(dimension, seed, rounds):
    rng = np.random.default_rng(seed)
    state = TopKResidual(dimension)
    k = max(1, dimension // 10)
    sent = np.zeros(dimension, dtype=np.float64)
    total = np.zeros(dimension, dtype=np.float64)
    for _ in range(rounds):
        update = rng.normal(size=dimension).astype(f32)
        before = state.residual.copy()
        sparse = SparseUpdate.decode(state.compress(update, k=k).encode())
        # each step: sent + new residual == update + old residual, exactly in float32
        np.testing.assert_array_equal(sparse.to_dense() + state.residual, update + before)
        sent += sparse.to_dense()
        total += update
    np.testing.assert_allclose(sent + state.residual, total, rtol=1e-5, atol=1e-5)


def test_topk_payload_folds_sparse():
    state = TopKResidual(8)
    sparse = SparseUpdate.decode(state.compress(np.arange(8, dtype=f32), k=3).encode())
    fold = StreamingFold(8)
    fold.fold_sparse("a", sparse.indices, sparse.values, 1.0)
    np.testing.assert_array_equal(fold.finish(), np.array([0, 0, 0, 0, 0, 5, 6, 7], dtype=f32))
    with pytest.raises(UpdateRejected):
        SparseUpdate.decode(sparse.encode()[:-4])


def test_sign_majority_vote_literal():
    vote = SignVote(4)
    vote.fold("a", sign_encode(np.array([1, -1, 2, -3], dtype=f32)))
    vote.fold("b", sign_encode(np.array([1, -1, -2, 3], dtype=f32)))
    assert not vote.fold("b", sign_encode(np.array([-1, -1, -1, -1], dtype=f32)))
    vote.fold("c", sign_encode(np.array([-1, 1, -2, 0], dtype=f32)))  # 0 votes +
    np.testing.assert_array_equal(vote.finish(), np.array([1, -1, -1, 1], dtype=f32))
    assert vote.count == 3
    tie = SignVote(1)
    tie.fold("a", sign_encode(np.array([1], dtype=f32)))
    tie.fold("b", sign_encode(np.array([-1], dtype=f32)))
    np.testing.assert_array_equal(tie.finish(), np.array([0], dtype=f32))


def test_sign_payload_is_one_bit_per_coordinate_and_checked():
    payload = sign_encode(np.ones(1001, dtype=f32))
    assert len(payload) == 16 + 126
    with pytest.raises(UpdateRejected) as raised:
        SignVote(1000).fold("a", payload)
    assert raised.value.code == RejectionCode.WRONG_LENGTH


def test_sign_vote_checkpoint_restore():
    vote = SignVote(3)
    vote.fold("a", sign_encode(np.array([1, -1, 1], dtype=f32)))
    restored = SignVote.restore(vote.checkpoint())
    assert not restored.fold("a", sign_encode(np.array([-1, -1, -1], dtype=f32)))
    restored.fold("b", sign_encode(np.array([1, 1, -1], dtype=f32)))
    np.testing.assert_array_equal(restored.finish(), np.array([1, 0, 0], dtype=f32))
