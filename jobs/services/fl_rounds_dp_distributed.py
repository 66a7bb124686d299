"""Distributed DP-FedAvg in secure rounds (docs/security.md, "Distributed mode").

A job with ``dp_mode = distributed`` (secure aggregation required, fixed clipping, RDP, volunteer
accounting: ``fl_privacy_rules``) has its noise added by the clients. When a secure round opens,
``distributed_share_plan`` sizes it: m = the round's minimum survivors less its anonymous
invitees (they may withhold their shares), the fixed-point scale leaves 8 standard deviations of
headroom for every invitee's share, and each client's Skellam share has variance (z·C·s)² / m,
so any m honest survivors already carry the target noise. The invite's ``secagg.noise`` block
carries the mechanism and that variance; the server then adds nothing (``round_release(...,
server_noise=False)``).

The accounting (``jobs.privacy.skellam``) uses what was actually added: at creation and
admission the worst case any round of the job can reach (the planned cohort, one share's worth
of headroom, exactly the target variance); after a round the scale it used and the shares of its
survivors, anonymous ones not counted (``distributed_releases``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from jobs.fl_models import DpMode, FlConfig, Participation, Round
from jobs.privacy import per_client_variance
from jobs.privacy.skellam import SkellamRelease, distributed_scale, skellam_release
from jobs.secagg_models import SecAggPhase, SecAggPhaseSet, SecAggRound
from jobs.services.fl_admission import fl_cohort_invited

MECHANISM = "skellam"


def distributed_noise_active(config: FlConfig) -> bool:
    """Whether the clients, not the server, noise this job's sums."""
    return bool(
        config.differential_privacy
        and config.dp_mode == DpMode.DISTRIBUTED
        and config.dp_clip_norm
        and config.secure_aggregation
    )


@dataclass(frozen=True, slots=True)
class SharePlan:
    """One secure round's noise: the scale, the honest shares m it is sized for, and the
    per-coordinate variance of one client's share (encoded units)."""

    scale: float
    noise_shares: int
    variance: float

    @property
    def invite_block(self) -> dict[str, Any]:
        """The invite's ``secagg.noise``: what each client adds before masking."""
        return {"mechanism": MECHANISM, "variance": self.variance}


def distributed_share_plan(
    *, config: FlConfig, invited: int, min_survivors: int, anonymous: int
) -> SharePlan:
    """The share sizing of a round of ``invited`` clients that accepts ``min_survivors``, of
    which ``anonymous`` are anonymous (their shares are not counted on)."""
    shares = max(1, min_survivors - anonymous)
    clip, z = float(config.dp_clip_norm), float(config.dp_noise_multiplier)
    scale = distributed_scale(
        n_clients=max(invited, 1), clip_norm=clip, noise_multiplier=z, noise_shares=shares
    )
    variance = per_client_variance(
        noise_multiplier=z, clip_norm=clip, scale=scale, min_survivors=shares
    )
    return SharePlan(scale=scale, noise_shares=shares, variance=variance)


def worst_case_release(*, config: FlConfig, invited: int) -> SkellamRelease:
    """The release any round of the job is at least as private as: the target variance
    (z·C·s)² at the smallest scale a round of ``invited`` clients can use."""
    clip, z = float(config.dp_clip_norm), float(config.dp_noise_multiplier)
    scale = distributed_scale(
        n_clients=max(invited, 1), clip_norm=clip, noise_multiplier=z, noise_shares=1
    )
    return skellam_release(
        clip_norm=clip,
        scale=scale,
        dimension=config.parameter_count,
        variance=(z * clip * scale) ** 2,
    )


def _noise_of(
    config: FlConfig, round_: Round, secagg: SecAggRound, survivors: list[int] | None
) -> tuple[float, float]:
    """(scale, summed share variance) of a finished secure round: its survivors' shares (the
    clients whose masked input is in the sum), anonymous invitees not counted, at least m."""
    plan = distributed_share_plan(
        config=config,
        invited=len(secagg.clients),
        min_survivors=secagg.min_survivors,
        anonymous=round_.anonymous_invited,
    )
    honest = max(plan.noise_shares, len(survivors or []) - round_.anonymous_invited)
    return secagg.scale, honest * _sent_variance(secagg, default=plan.variance)


def _sent_variance(secagg: SecAggRound, *, default: float) -> float:
    """The share variance the invites asked for. A replacement invited mid-round can raise the
    round's anonymous count, which would size a larger share than anyone added: account the one
    that was sent."""
    invites = Participation.objects.unscoped().filter(
        pk__in=[int(pid) for pid in secagg.clients.values()]
    )
    sent = [
        ((invite.get("secagg") or {}).get("noise") or {}).get("variance")
        for invite in invites.values_list("invite", flat=True)
    ]
    sent = [float(v) for v in sent if v is not None]
    return min(sent) if sent else default


def _finished_round_noise(config: FlConfig, round_: Round) -> tuple[float, float] | None:
    if round_.pk is None:
        return None
    secagg = SecAggRound.objects.unscoped().filter(round=round_, phase=SecAggPhase.DONE).first()
    if secagg is None:
        return None
    survivors = (
        SecAggPhaseSet.objects.unscoped()
        .filter(secagg_round=secagg, phase=SecAggPhase.MASKED_INPUT)
        .values_list("members", flat=True)
        .first()
    )
    return _noise_of(config, round_, secagg, survivors)


def _release(config: FlConfig, noise: tuple[float, float] | None) -> SkellamRelease:
    if noise is None:
        return worst_case_release(config=config, invited=fl_cohort_invited(config=config))
    scale, variance = noise
    return skellam_release(
        clip_norm=float(config.dp_clip_norm),
        scale=scale,
        dimension=config.parameter_count,
        variance=variance,
    )


def distributed_releases(*, config: FlConfig, rounds: list[Round]) -> list[SkellamRelease]:
    """What each round released, in two queries whatever the number of rounds: a finished
    secure round its own scale and survivors' shares; any other round the worst case."""
    secaggs = {
        secagg.round_id: secagg
        for secagg in SecAggRound.objects.unscoped().filter(
            round__in=rounds, phase=SecAggPhase.DONE
        )
    }
    survivors = dict(
        SecAggPhaseSet.objects.unscoped()
        .filter(secagg_round__in=list(secaggs.values()), phase=SecAggPhase.MASKED_INPUT)
        .values_list("secagg_round__round_id", "members")
    )
    return [
        _release(
            config,
            None
            if r.pk not in secaggs
            else _noise_of(config, r, secaggs[r.pk], survivors.get(r.pk)),
        )
        for r in rounds
    ]


def clients_noised(*, config: FlConfig, round: Round) -> bool:  # noqa: A002
    """Whether the round's unmasked sum carries the clients' shares: a distributed job's round
    whose secure aggregation finished. Any other round of such a job (none today) is noised by
    the server, and accounted at the worst case, which bounds the Gaussian's ε from above."""
    return distributed_noise_active(config) and _finished_round_noise(config, round) is not None


def distributed_noise_std(*, config: FlConfig, round: Round) -> float | None:  # noqa: A002
    """The standard deviation of the clients' summed noise per coordinate, in update units."""
    noise = _finished_round_noise(config, round)
    return None if noise is None else math.sqrt(noise[1]) / noise[0]
