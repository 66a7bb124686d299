"""Central DP-FedAvg in the rounds (docs/security.md, "Differential privacy in rounds").

A differentially private round clips every accepted update to the round's clip norm C as it is
folded, weights every client alike (a client's sample count is its own to report, so it cannot
set its influence), and at the close adds Gaussian noise of standard deviation z·C to the sum
before dividing by the number of folded updates — the rule of ``jobs.privacy.dp_fedavg``
(``server_finish``): the sensitivity of the sum to one client is C whatever it reports, and the
divisor, the number of participants, is shown on the job page anyway. The noise comes from the
operating system's CSPRNG (``jobs.privacy.csprng_normal``); no seed exists, and neither the noise
nor the clean sum is stored.

With adaptive clipping (Andrew et al. 2021) each folded update also adds its bit ‖Δ‖ ≤ C to a
count on the round; at the close the count is noised with σ_b (``fl_count_noise_std``), the
update noise becomes z_Δ, and C moves toward the target quantile for the next round.

The round services call these functions at three points: ``round_clip_norm`` when a round
opens, ``dp_fold_terms`` and ``dp_fold_record`` in the fold, ``round_release`` at the close.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jobs.aggregation import StreamingFold
from jobs.fl_models import FlConfig, Participation, Round
from jobs.models import Job
from jobs.privacy import AdaptiveClip, adaptive_noise_multiplier, csprng_normal
from jobs.services.fl_privacy import fl_count_noise_std
from jobs.services.fl_rounds_dp_distributed import MECHANISM as DISTRIBUTED_MECHANISM
from jobs.services.fl_rounds_dp_distributed import distributed_noise_std
from tenants.tiers import JobKind

# Andrew et al.'s geometric step η_C on the clip norm.
ADAPTIVE_CLIP_LEARNING_RATE = 0.2


def dp_rounds_active(config: FlConfig) -> bool:
    """Whether this job's rounds clip and noise (DP-FedAvg; in distributed mode the clients add
    the noise under secure aggregation, ``fl_rounds_dp_distributed``)."""
    return bool(config.differential_privacy and config.dp_clip_norm)


def round_clip_norm(*, job: Job, config: FlConfig) -> float | None:
    """The clip norm C of the job's next round: fixed, or for adaptive clipping the C the last
    closed round computed (a failed round keeps its own); None without DP."""
    if not dp_rounds_active(config) or job.kind == JobKind.ANALYTICS:
        return None  # an analytics job noises its sum at the close itself (docs/analytics.md)
    if not config.dp_adaptive_clipping:
        return float(config.dp_clip_norm)
    last = (
        Round.objects.for_tenant(job.tenant)
        .filter(job=job, clip_norm__isnull=False)
        .order_by("-number")
        .values_list("clip_norm", "clip_norm_next")
        .first()
    )
    if last is None:
        return float(config.dp_clip_norm)
    current, following = last
    return float(following if following is not None else current)


def dp_invite_terms(*, round: Round) -> dict[str, Any]:  # noqa: A002 - the model's name
    """The invite's ``dp`` hyperparameters: clients clip locally to the round's C too."""
    if round.clip_norm is None:
        return {}
    return {"dp": {"clip_norm": round.clip_norm}}


def dp_fold_terms(
    *,
    round: Round,  # noqa: A002
    participation: Participation,
    weight: float,
) -> tuple[float, float | None]:
    """(fold weight, clip norm) for an update of a DP round: the weight without the sample
    count (every client alike; in async mode the staleness discount stays), clipped to C.
    Without DP: the weight unchanged and no clipping."""
    if round.clip_norm is None:
        return weight, None
    samples = participation.samples or 1
    return weight / samples, round.clip_norm


def dp_fold_record(*, round: Round, fold: StreamingFold) -> None:  # noqa: A002
    """After a fold of a DP round with adaptive clipping: count the update's clip bit.

    Call it only when the update was folded (not a duplicate), in the fold's transaction with
    the round locked, before the round is saved: the count moves with the checkpoint pointer."""
    if round.clip_norm is None or not round.job.fl_config.dp_adaptive_clipping:
        return
    if fold.last_norm is not None and fold.last_norm <= round.clip_norm:
        round.clip_within += 1


@dataclass(frozen=True)
class RoundRelease:
    """What a closing round releases: the mean update for the strategy, and DP metrics."""

    mean_delta: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
    clip_norm_next: float | None = None


def round_release(
    *,
    round: Round,  # noqa: A002
    config: FlConfig,
    fold: StreamingFold,
    server_noise: bool = True,
) -> RoundRelease:
    """The round's mean update: the fold's mean, or for a DP round (clipped sum + N(0, (z·C)²))
    divided by the folded updates, with the next C for adaptive clipping. ``server_noise``
    False: the sum already carries the clients' distributed noise (secure aggregation)."""
    if round.clip_norm is None:
        return RoundRelease(fold.finish())
    clip = float(round.clip_norm)
    survivors = fold.count
    if survivors == 0:
        raise ValueError("no update has been folded")
    # Distributed mode: the clients' Skellam shares are in the unmasked sum; add nothing.
    z = float(config.dp_noise_multiplier) if server_noise else 0.0
    adaptive = None
    if config.dp_adaptive_clipping:
        adaptive = AdaptiveClip(
            clip_norm=clip,
            target_quantile=config.dp_target_quantile or 0.5,
            learning_rate=ADAPTIVE_CLIP_LEARNING_RATE,
            count_noise_std=fl_count_noise_std(config=config),
        )
    z_update = adaptive_noise_multiplier(z, adaptive.count_noise_std) if adaptive and z else z
    total = fold.weighted_sum() + csprng_normal(fold.dimension, std=z_update * clip)
    mean = (total / survivors).astype(np.float32)
    metrics: dict[str, Any] = {
        "dp_clip_norm": clip,
        "dp_mechanism": "gaussian" if server_noise else DISTRIBUTED_MECHANISM,
        "dp_noise_std": z_update * clip / survivors,
    }
    summed = None if server_noise else distributed_noise_std(config=config, round=round)
    if summed is not None:
        metrics["dp_noise_std"] = summed / survivors
    if adaptive is None:
        return RoundRelease(mean, metrics)
    noise = float(csprng_normal(1, std=adaptive.count_noise_std)[0]) if z else 0.0
    fraction = (round.clip_within + noise) / survivors
    following = adaptive.updated(fraction).clip_norm
    metrics |= {"dp_within_fraction": fraction, "dp_clip_norm_next": following}
    return RoundRelease(mean, metrics, following)
