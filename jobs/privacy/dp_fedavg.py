"""One DP-FedAvg round end to end, around secure aggregation: what a client does to its update
before masking, and what the server does to the unmasked sum.

Client: clip to C → (adaptive) append the within-bound bit → encode into Z_2^32 → (distributed)
add an integer noise share. Server: decode → (central) add Gaussian noise → mean over the
survivors → (adaptive) the next clip norm from the noised count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from jobs.privacy.clipping import AdaptiveClip, adaptive_noise_multiplier, clip_l2, with_clip_bit
from jobs.privacy.noise import add_noise_to_encoded, per_client_variance, skellam_share
from jobs.privacy.skellam import distributed_scale
from jobs.secagg.encoding import decode_sum, encode, scale_for
from jobs.secagg.primitives import RandomBytes

Mechanism = Literal["central", "skellam"]


@dataclass(frozen=True)
class DpRound:
    """Public parameters of one DP round over a secure-aggregation cohort.

    n_clients: the cohort selected (sizes the encoding); min_survivors: the fewest the round
    accepts (sizes distributed noise shares). adaptive: the clip state when clipping is adaptive
    (its clip_norm is this round's C and its count_noise_std the noise on the bit count).
    headroom_stds: encoding headroom for distributed noise, in standard deviations of the total.
    """

    clip_norm: float
    noise_multiplier: float
    n_clients: int
    min_survivors: int
    mechanism: Mechanism = "central"
    adaptive: AdaptiveClip | None = None
    headroom_stds: float = 8.0

    @property
    def update_noise_multiplier(self) -> float:
        """z for the update sum: z itself, or z_Δ when the count takes part of the budget."""
        if self.adaptive is None or not self.noise_multiplier:
            return self.noise_multiplier
        return adaptive_noise_multiplier(self.noise_multiplier, self.adaptive.count_noise_std)

    @property
    def bound(self) -> float:
        """Per-coordinate bound the encoding is sized for (clip, plus noise headroom)."""
        bound = max(self.clip_norm, 1.0 if self.adaptive else 0.0)
        if self.mechanism != "central":
            noise_std = max(
                self.update_noise_multiplier * self.clip_norm,
                self.adaptive.count_noise_std if self.adaptive else 0.0,
            )
            bound += self.headroom_stds * noise_std
        return bound

    @property
    def scale(self) -> float:
        """Fixed-point scale at which the cohort's sum cannot wrap: with Skellam shares and
        fixed clipping the rounds' own sizing (``distributed_scale``); with the clip bit as an
        extra coordinate (the rounds refuse that), a per-client bound with the headroom."""
        if self.mechanism != "central" and self.adaptive is None:
            return distributed_scale(
                n_clients=self.n_clients,
                clip_norm=self.clip_norm,
                noise_multiplier=self.noise_multiplier,
                noise_shares=self.min_survivors,
                headroom_stds=self.headroom_stds,
            )
        return scale_for(n_clients=self.n_clients, bound=self.bound)


def client_encode(
    update: np.ndarray,
    params: DpRound,
    *,
    random_bytes: RandomBytes = os.urandom,
) -> np.ndarray:
    """A client's update ready for masking: (d,) float → (d,) or (d + 1,) uint32; the rounding
    offsets and the Skellam share are read from ``random_bytes``."""
    clipped, within = clip_l2(update, params.clip_norm)
    values = with_clip_bit(clipped, within) if params.adaptive else clipped
    encoded = encode(
        values, scale=params.scale, bound=max(params.clip_norm, 1.0), random_bytes=random_bytes
    )
    if params.mechanism == "central" or not params.noise_multiplier:
        return encoded
    variance = per_client_variance(
        noise_multiplier=params.update_noise_multiplier,
        clip_norm=params.clip_norm,
        scale=params.scale,
        min_survivors=params.min_survivors,
    )
    noise = skellam_share(clipped.size, variance=variance, random_bytes=random_bytes)
    if params.adaptive:
        bit_variance = (params.adaptive.count_noise_std * params.scale) ** 2 / params.min_survivors
        noise = np.append(noise, skellam_share(1, variance=bit_variance, random_bytes=random_bytes))
    return add_noise_to_encoded(encoded, noise)


@dataclass(frozen=True)
class DpRoundResult:
    """The noised mean update, and for adaptive clipping the next round's clip state."""

    mean_update: np.ndarray
    noisy_within_fraction: float | None
    next_clip: AdaptiveClip | None


def server_finish(
    total: np.ndarray,
    params: DpRound,
    *,
    survivors: int,
    rng: np.random.Generator | None = None,
) -> DpRoundResult:
    """From the unmasked Z_2^32 sum of `survivors` clients to the noised mean update.

    total: (d,) or (d + 1,) uint32. The mean divides by the survivors, a number the server
    knows anyway; the noise standard deviation on the mean is z·C / survivors.
    """
    summed = decode_sum(total, scale=params.scale)
    generator = rng if rng is not None else np.random.default_rng()
    if params.adaptive:
        summed, count = summed[:-1], float(summed[-1])
    if params.mechanism == "central" and params.noise_multiplier:
        std = params.update_noise_multiplier * params.clip_norm
        summed = summed + generator.normal(0.0, std, summed.shape)
        if params.adaptive:
            count += generator.normal(0.0, params.adaptive.count_noise_std)
    if not params.adaptive:
        return DpRoundResult(summed / survivors, None, None)
    fraction = count / survivors
    return DpRoundResult(summed / survivors, fraction, params.adaptive.updated(fraction))
