"""Property tests: Shamir t-of-k sharing and the fixed-point encoding."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.secagg.encoding import decode_sum, encode, scale_for
from jobs.secagg.primitives import (
    PRIME,
    lagrange_at_zero,
    secret_from_int,
    shamir_reconstruct,
    shamir_share,
)

secrets_32 = st.binary(min_size=32, max_size=32)


@st.composite
def sharings(draw):
    k = draw(st.integers(1, 12))
    t = draw(st.integers(1, k))
    xs = draw(st.lists(st.integers(1, 2**32 - 1), min_size=k, max_size=k, unique=True))
    secret = draw(secrets_32)
    chosen = draw(st.permutations(range(k)))
    return secret, xs, t, chosen


@settings(max_examples=60, deadline=None)
@given(sharings())
def test_any_t_shares_reconstruct_the_secret(case) -> None:
    secret, xs, t, order = case
    shares = shamir_share([secret], xs, t, os.urandom)[:, 0]
    pick = order[:t]
    value = shamir_reconstruct([xs[i] for i in pick], [shares[i] for i in pick])
    assert secret_from_int(value) == secret


@settings(max_examples=60, deadline=None)
@given(sharings(), secrets_32)
def test_t_minus_one_shares_are_consistent_with_every_secret(case, other_secret) -> None:
    # given t − 1 shares of a secret (t ≥ 2)
    secret, xs, t, order = case
    if t < 2:
        return
    shares = shamir_share([secret], xs, t, os.urandom)[:, 0]
    known = order[: t - 1]
    last = order[t - 1]
    # when any other secret is proposed, then a value for the t-th share exists that makes the
    # t − 1 known shares reconstruct to it: the t − 1 shares do not determine the secret
    points = [xs[i] for i in known] + [xs[last]]
    weights = lagrange_at_zero(points)
    partial = sum(int(w) * int(shares[i]) for w, i in zip(weights[:-1], known, strict=True))
    target = int.from_bytes(other_secret, "big")
    forged = (target - partial) * pow(int(weights[-1]), -1, PRIME) % PRIME
    values = [int(shares[i]) for i in known] + [forged]
    assert secret_from_int(shamir_reconstruct(points, values)) == other_secret


@settings(max_examples=80, deadline=None)
@given(
    n_clients=st.integers(1, 5000),
    bound=st.floats(1e-3, 1e3),
    sign=st.sampled_from([-1.0, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_cohort_sum_at_the_bound_does_not_wrap(n_clients, bound, sign, seed) -> None:
    # given n clients all at the extreme value of the sized range (the worst case)
    scale = scale_for(n_clients=n_clients, bound=bound)
    rng = np.random.default_rng(seed)
    values = np.array([sign * bound, sign * bound * 0.999, -sign * bound * 0.25])
    total = np.zeros(3, np.uint32)
    for _ in range(min(n_clients, 50)):
        total += encode(values, scale=scale, bound=bound, random_bytes=rng.bytes)
    # when the remaining clients repeat it (same encoding, summed by multiplication)
    repeats = n_clients - min(n_clients, 50)
    if repeats:
        one = encode(values, scale=scale, bound=bound, random_bytes=rng.bytes)
        total += (one.astype(np.uint64) * repeats % 2**32).astype(np.uint32)
    # then the decoded sum has the right sign and is within one rounding step per client
    decoded = decode_sum(total, scale=scale)
    np.testing.assert_allclose(decoded, n_clients * values, atol=n_clients / scale + 1e-9)
    signed = total.view(np.int32).astype(np.int64)
    assert abs(signed[0]) <= 2**31 - 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=64), st.integers(0, 2**32 - 1))
def test_encoding_clips_and_round_trips_within_one_step(values, seed) -> None:
    scale = scale_for(n_clients=10, bound=1.0)
    rng = np.random.default_rng(seed)
    encoded = encode(np.array(values), scale=scale, bound=1.0, random_bytes=rng.bytes)
    decoded = decode_sum(encoded, scale=scale)
    np.testing.assert_allclose(decoded, np.clip(values, -1.0, 1.0), atol=1 / scale)
