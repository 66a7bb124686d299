"""Distributed DP with Skellam shares: the sampler (seeded byte streams here only: the clients
read os.urandom), the sizing of the shares and the scale, and the RDP accountant against
dp-accounting's Gaussian one in the limit of a large scale."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from ccgsc_worker import skellam as sampler
from ccgsc_worker.skellam import poisson, skellam_share
from jobs.privacy import per_client_variance
from jobs.privacy.skellam import (
    ORDERS,
    distributed_scale,
    skellam_epsilon,
    skellam_rdp,
    skellam_release,
)
from jobs.secagg.encoding import decode_sum, encode


def _stream(seed: int):  # noqa: ANN202
    return np.random.default_rng(seed).bytes


def _moments_close(sample: np.ndarray, mean: float, variance: float) -> None:
    """Mean and variance within six standard errors (the fourth moment ≈ 3σ⁴ + σ²)."""
    n = sample.size
    assert abs(sample.mean() - mean) < 6 * math.sqrt(variance / n)
    assert abs(sample.var() - variance) < 6 * math.sqrt((2 * variance**2 + variance) / n)


@pytest.mark.parametrize("mean", [0.7, 4.0, 9.99, 10.0, 57.3, 2.5e4, 3e9, 4e13])
def test_poisson_draws_have_the_mean_and_variance_of_their_parameter(mean: float) -> None:
    draws = poisson(mean, 200_000, random_bytes=_stream(1))
    assert draws.dtype == np.int64
    assert draws.min() >= 0
    _moments_close(draws.astype(np.float64), mean, mean)


@pytest.mark.parametrize("mean", [3.5, 31.0, 800.0])
def test_poisson_frequencies_match_the_probability_mass(mean: float) -> None:
    # given 300,000 draws, binned at every k whose expected count is at least 50
    draws = poisson(mean, 300_000, random_bytes=_stream(2))
    ks = np.arange(int(mean + 12 * math.sqrt(mean) + 12))
    pmf = np.exp(-mean + ks * math.log(mean) - np.array([math.lgamma(k + 1) for k in ks]))
    expected = pmf * draws.size
    counts = np.bincount(draws, minlength=ks.size)[: ks.size]
    kept = expected >= 50
    # then each kept bin is within 6 standard deviations and the chi-square is plausible
    deviation = (counts[kept] - expected[kept]) / np.sqrt(expected[kept])
    assert np.abs(deviation).max() < 6
    degrees = int(kept.sum())
    assert float((deviation**2).sum()) < degrees + 6 * math.sqrt(2 * degrees)


def test_skellam_shares_are_symmetric_integers_of_the_asked_variance() -> None:
    for variance in (3.0, 400.0, 2.0e12):
        share = skellam_share(200_000, variance=variance, random_bytes=_stream(3))
        assert share.dtype == np.int64
        _moments_close(share.astype(np.float64), 0.0, variance)
    skew = skellam_share(200_000, variance=50.0, random_bytes=_stream(4)).astype(np.float64)
    assert abs(((skew - skew.mean()) ** 3).mean() / 50.0**1.5) < 6 * math.sqrt(15 / 200_000)


def test_the_sampler_is_a_function_of_its_bytes_and_refuses_bad_parameters() -> None:
    first = skellam_share(1_000, variance=1e10, random_bytes=_stream(5))
    assert np.array_equal(first, skellam_share(1_000, variance=1e10, random_bytes=_stream(5)))
    assert not np.array_equal(first, skellam_share(1_000, variance=1e10))  # os.urandom
    assert sampler.uniforms(3, lambda n: b"\xff" * n).max() < 1.0
    with pytest.raises(ValueError, match="variance positive"):
        skellam_share(10, variance=0.0)
    with pytest.raises(ValueError, match="finite"):
        poisson(float("nan"), 3)


def test_shares_sized_for_m_survivors_sum_to_the_target_noise_within_the_scale() -> None:
    # given a cohort of 40 sized for m = 30 honest survivors at z = 2, C = 0.5
    n, m, z, clip, d = 40, 30, 2.0, 0.5, 5_000
    scale = distributed_scale(n_clients=n, clip_norm=clip, noise_multiplier=z, noise_shares=m)
    variance = per_client_variance(noise_multiplier=z, clip_norm=clip, scale=scale, min_survivors=m)
    # when every one of the 40 survives, each encoding an update at the clip on every coordinate
    stream = _stream(6)
    total = np.zeros(d, dtype=np.uint32)
    for _ in range(n):
        total += encode(np.full(d, clip), scale=scale, bound=clip, random_bytes=stream)
        total += (skellam_share(d, variance=variance, random_bytes=stream) & 0xFFFFFFFF).astype(
            np.uint32
        )
    noise = decode_sum(total, scale=scale) - n * clip
    # then the noise is z·C·√(n/m) per coordinate and the sum never wrapped (8σ of headroom)
    _moments_close(noise, 0.0, (z * clip) ** 2 * n / m)
    assert n * (scale * clip + 1) + 8 * z * clip * scale * math.sqrt(n / m) <= 2**31 - 1 + 1e-6
    with pytest.raises(ValueError, match="do not fit"):
        distributed_scale(n_clients=2**31, clip_norm=1.0, noise_multiplier=1.0, noise_shares=1)


def test_the_accountant_tends_to_the_gaussian_one_at_a_large_scale() -> None:
    # given z = 1.3 over 25 rounds: dp-accounting's Gaussian RDP at the same integer orders
    z, rounds, delta, d = 1.3, 25, 1e-5, 650
    gaussian = rdp.RdpAccountant(orders=ORDERS)
    gaussian.compose(dp_accounting.GaussianDpEvent(z), rounds)
    reference = gaussian.get_epsilon(delta)
    # when the Skellam noise has variance (z·C·s)² at growing scales s
    epsilons = []
    for scale in (1e3, 1e5, 1e7, 1e9):
        release = skellam_release(
            clip_norm=1.0, scale=scale, dimension=d, variance=(z * scale) ** 2
        )
        epsilons.append(skellam_epsilon([(release, rounds)], delta=delta))
    # then ε falls toward the Gaussian's, never below it (discretisation costs privacy)
    assert epsilons == sorted(epsilons, reverse=True)
    assert all(eps > reference for eps in epsilons)
    assert epsilons[-1] == pytest.approx(reference, rel=1e-6)
    assert epsilons[0] > reference * 1.02  # at s = 1000, √d/(C·s) is 2.5 %
    # and dp-accounting's default orders (fractional ones too) give a little less at this ε
    default = rdp.RdpAccountant()
    default.compose(dp_accounting.GaussianDpEvent(z), rounds)
    assert default.get_epsilon(delta) <= reference < 1.05 * default.get_epsilon(delta)


def test_the_bound_by_hand_and_its_composition() -> None:
    release = skellam_release(clip_norm=2.0, scale=10.0, dimension=4, variance=900.0)
    assert (release.l2_sensitivity, release.l1_sensitivity) == (22.0, 44.0)
    # α Δ₂²/(2μ) + min(((2α − 1)Δ₂² + 6Δ₁)/(4μ²), 3Δ₁/(2μ)) at α = 3
    by_hand = 3 * 484 / 1800 + min((5 * 484 + 264) / (4 * 900**2), 3 * 44 / 1800)
    assert skellam_rdp(release, 3) == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="integer orders"):
        skellam_rdp(release, 1.5)
    # composing two rounds of one release is one release counted twice
    other = skellam_release(clip_norm=2.0, scale=10.0, dimension=4, variance=1800.0)
    twice = skellam_epsilon([(release, 2)], delta=1e-5)
    assert twice == pytest.approx(skellam_epsilon([(release, 1), (release, 1)], delta=1e-5))
    assert skellam_epsilon([(release, 1), (other, 1)], delta=1e-5) < twice
    assert skellam_epsilon([(release, 0)], delta=1e-5) == 0.0
