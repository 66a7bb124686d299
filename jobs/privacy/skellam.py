"""Distributed DP with the Skellam mechanism (Agarwal, Kairouz and Liu, NeurIPS 2021): the
sizing of the clients' shares and the exact RDP accounting of their sum.

Each client adds Sk(v) per coordinate to its fixed-point update (scale s, stochastic rounding)
before masking; the server unmasks the sum of m survivors' inputs and shares, which carries
Sk(m·v) noise exactly (Skellam is closed under summation). dp-accounting has no Skellam event,
so the bound is the paper's (Corollary 3.6, integer orders α > 1), in encoded integer units with
μ the per-coordinate variance of the summed noise:

    ε(α) ≤ α·Δ₂²/(2μ) + min(((2α − 1)·Δ₂² + 6·Δ₁)/(4μ²), 3·Δ₁/(2μ))

The sensitivities include the discretisation: a client's clipped update x (‖x‖₂ ≤ C) encodes as
round(s·x) with every coordinate within 1 of s·x, so Δ₂ = C·s + √d and Δ₁ = √d·C·s + d.
Modular wrap-around of the sum in Z_2^32 is post-processing of the noised sum (it costs accuracy,
never privacy). RDP composes by addition over rounds and converts to (ε, δ) with dp-accounting's
own conversion; as s → ∞ the bound tends to the Gaussian mechanism's at z = √μ / (C·s).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# The bound holds at integer orders only; dp-accounting's default orders include fractions.
ORDERS = (*range(2, 129), *range(132, 257, 4), 320, 384, 448, 512, 768, 1024)
_HALF_RANGE = 2**31 - 1  # the signed sum of Z_2^32 must stay within it


@dataclass(frozen=True, slots=True)
class SkellamRelease:
    """One round's release in encoded units: the summed noise's variance μ per coordinate and a
    client's L2 and L1 sensitivity Δ₂, Δ₁ (discretisation included)."""

    variance: float
    l2_sensitivity: float
    l1_sensitivity: float


def skellam_release(
    *, clip_norm: float, scale: float, dimension: int, variance: float
) -> SkellamRelease:
    """The release of a sum with noise variance ``variance`` (encoded units) over updates
    clipped to L2 norm C and encoded at ``scale`` with stochastic rounding in d coordinates."""
    if clip_norm <= 0 or scale <= 0 or dimension < 1 or not variance > 0:
        raise ValueError("clip_norm, scale, dimension and variance must be positive")
    root = math.sqrt(dimension)
    return SkellamRelease(
        variance=variance,
        l2_sensitivity=clip_norm * scale + root,
        l1_sensitivity=root * clip_norm * scale + dimension,
    )


def skellam_rdp(release: SkellamRelease, order: int) -> float:
    """The RDP ε(α) of one release at integer order α > 1 (Agarwal et al. 2021, Cor. 3.6)."""
    if order < 2 or order != int(order):
        raise ValueError("the Skellam bound holds at integer orders α ≥ 2")
    mu, l2, l1 = release.variance, release.l2_sensitivity, release.l1_sensitivity
    gaussian = order * l2 * l2 / (2 * mu)
    return gaussian + min(((2 * order - 1) * l2 * l2 + 6 * l1) / (4 * mu * mu), 3 * l1 / (2 * mu))


def skellam_epsilon(releases: Iterable[tuple[SkellamRelease, int]], *, delta: float) -> float:
    """ε at δ after composing ``count`` rounds of each release: (release, count) pairs."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    pairs = [(release, count) for release, count in releases if count > 0]
    if not pairs:
        return 0.0
    rdp = [sum(count * skellam_rdp(r, order) for r, count in pairs) for order in ORDERS]
    return float(compute_epsilon(ORDERS, rdp, delta)[0])


def distributed_scale(
    *,
    n_clients: int,
    clip_norm: float,
    noise_multiplier: float,
    noise_shares: int,
    headroom_stds: float = 8.0,
) -> float:
    """The largest fixed-point scale s at which n clients' encodings (each within s·C + 1) plus
    every client's share (all n surviving: std z·C·s·√(n/m)) stay within the signed 32-bit
    range with ``headroom_stds`` standard deviations of noise to spare."""
    if n_clients < 1 or clip_norm <= 0 or noise_multiplier < 0 or noise_shares < 1:
        raise ValueError("need clients, a positive clip norm and at least one share")
    noise = headroom_stds * noise_multiplier * clip_norm * math.sqrt(n_clients / noise_shares)
    scale = (_HALF_RANGE - n_clients) / (n_clients * clip_norm + noise)
    if scale <= 0:
        raise ValueError(f"{n_clients} clients do not fit in 32 bits")
    return scale
