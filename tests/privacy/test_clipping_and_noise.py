"""Clipping, adaptive clipping and noise, alone and through a secure-aggregation round."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jobs.privacy import (
    AdaptiveClip,
    adaptive_noise_multiplier,
    add_central_gaussian,
    add_noise_to_encoded,
    clip_l2,
    per_client_variance,
    skellam_share,
    with_clip_bit,
)
from jobs.secagg import RoundConfig, decode_sum, encode, scale_for
from jobs.secagg.simulate import run_round


def test_clip_l2_scales_long_updates_and_keeps_short_ones() -> None:
    update = np.array([3.0, 4.0])
    clipped, within = clip_l2(update, 1.0)
    np.testing.assert_allclose(clipped, [0.6, 0.8])
    assert within is False
    same, within = clip_l2(update, 5.0)
    np.testing.assert_array_equal(same, [3.0, 4.0])
    assert within is True
    np.testing.assert_array_equal(update, [3.0, 4.0])  # input untouched
    np.testing.assert_allclose(with_clip_bit(clipped, False), [0.6, 0.8, 0.0])


def test_adaptive_clip_moves_toward_the_quantile() -> None:
    clip = AdaptiveClip(clip_norm=1.0, target_quantile=0.5, learning_rate=0.2)
    assert clip.updated(0.9).clip_norm == pytest.approx(math.exp(-0.2 * 0.4))  # too loose
    assert clip.updated(0.1).clip_norm == pytest.approx(math.exp(0.2 * 0.4))  # too tight
    # z_Δ from Andrew et al.: z = 1, σ_b = 10 → (1 − 1/400)^(−1/2)
    assert adaptive_noise_multiplier(1.0, 10.0) == pytest.approx((1 - 1 / 400) ** -0.5)
    with pytest.raises(ValueError, match="2σ_b > z"):
        adaptive_noise_multiplier(1.0, 0.4)


def test_central_gaussian_has_std_z_times_clip() -> None:
    noised = add_central_gaussian(
        np.zeros(200_000), noise_multiplier=1.5, clip_norm=2.0, rng=np.random.default_rng(0)
    )
    assert noised.std() == pytest.approx(3.0, rel=0.01)


def test_integer_noise_shares_have_the_requested_variance() -> None:
    noise = skellam_share(200_000, variance=400.0, random_bytes=np.random.default_rng(1).bytes)
    assert noise.dtype == np.int64
    assert noise.var() == pytest.approx(400.0, rel=0.02)
    assert abs(noise.mean()) < 0.2


def test_distributed_noise_and_clip_bit_through_secure_aggregation() -> None:
    # given 20 clients with clipped updates, the clip bit as an extra coordinate, and Skellam
    # shares sized for at least 16 survivors
    n, d, clip, z = 20, 2000, 1.0, 0.5
    rng = np.random.default_rng(4)
    config = RoundConfig(
        job="dp",
        round_number=1,
        session_id=bytes(32),
        graph_seed=b"dp",
        client_ids=tuple(range(1, n + 1)),
        dimension=d + 1,
    )
    # headroom for the noise: 8 standard deviations of the total on top of the clip
    scale = scale_for(n_clients=n, bound=clip + 8 * z * clip)
    variance = per_client_variance(
        noise_multiplier=z, clip_norm=clip, scale=scale, min_survivors=16
    )
    updates, inputs, within_bound = {}, {}, {}
    for i in config.client_ids:
        clipped, within = clip_l2(rng.normal(0, 0.01 * (1 + i % 3), d), clip)
        updates[i], within_bound[i] = clipped, within
        encoded = encode(
            with_clip_bit(clipped, within), scale=scale, bound=clip, random_bytes=rng.bytes
        )
        share = skellam_share(d + 1, variance=variance, random_bytes=rng.bytes)
        inputs[i] = add_noise_to_encoded(encoded, share)
    # when 4 clients drop after sharing
    drop = {3: "masked_input", 8: "masked_input", 13: "masked_input", 18: "masked_input"}
    total, server = run_round(config, inputs, drop_before=drop)
    decoded = decode_sum(total, scale=scale)
    # then the sum is the survivors' clipped sum plus noise of std z·C (16 shares survived)
    plain = sum(updates[i] for i in server.alive)
    error = decoded[:d] - plain
    assert error.std() == pytest.approx(z * clip, rel=0.05)
    assert abs(error.mean()) < 0.05
    within_alive = sum(within_bound[i] for i in server.alive)
    assert 0 < within_alive < len(server.alive)
    assert abs(decoded[d] - within_alive) < 4 * z * clip
