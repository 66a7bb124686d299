"""A job's differential-privacy budget on the platform: the mechanism its settings describe,
the admission of a round against (ε, δ), and the ε recorded after each round.

The accounting itself is ``jobs.privacy.accounting`` (dp-accounting, RDP or PLD); this module
only turns a job's stored settings into its inputs and keeps the count of rounds that spend.

The round services call two functions (docs/security.md, "The tenant's budget"):

- ``fl_privacy_admit(job=..., round_number=...)`` before opening round ``round_number``: it
  raises ``ValidationError`` when that round would take ε past the budget. ``fl_job_admit``
  calls it, so starting, resuming and every ``round_open`` that admits through it are covered.
- ``fl_privacy_record(round=...)`` once the round is closed (or failed), in the closing
  transaction: it stores the job's cumulative ε on the round.

A round counts as spending once it is opened and has not failed: an open or aggregating round
may still release a noised aggregate, so admission counts it before it closes. A failed round
released nothing and spends nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from jobs.fl_models import DpMode, DpSampling, FlConfig, Round, RoundStatus
from jobs.models import Job
from jobs.privacy.accounting import VOLUNTEER_SAMPLING_PROBABILITY, epsilon_spent
from jobs.privacy.skellam import skellam_epsilon
from jobs.secagg.graph import neighbour_count
from jobs.services.fl_admission import fl_cohort_invited
from jobs.services.fl_rounds_dp_distributed import MECHANISM as DISTRIBUTED_MECHANISM
from jobs.services.fl_rounds_dp_distributed import (
    distributed_noise_active,
    distributed_releases,
    worst_case_release,
)

# Andrew et al. (2021) put the noise on the clipped-count at σ_b = m/20 for m clients a round.
COUNT_NOISE_CLIENTS_PER_STD = 20
MAX_ROUNDS_SHOWN = 100


def fl_sampling_probability(*, config: FlConfig, invited: int) -> float:
    """q for the accountant: 1 for a volunteer cohort; invited / population for an enrolled one.

    ``invited`` is the cohort with over-selection: a larger q is the conservative side.
    """
    if config.dp_sampling == DpSampling.ENROLLED and config.dp_population:
        return min(1.0, invited / config.dp_population)
    return VOLUNTEER_SAMPLING_PROBABILITY


def fl_count_noise_std(*, config: FlConfig) -> float:
    """σ_b, the Gaussian noise on the adaptive-clipping count: the minimum reports over 20."""
    return config.min_reports / COUNT_NOISE_CLIENTS_PER_STD


def fl_epsilon_after(*, config: FlConfig, invited: int, rounds: int) -> float:
    """ε of the job's mechanism after ``rounds`` rounds, from ``jobs.privacy.accounting``.

    Adaptive clipping does not change the accounting: the update noise becomes z_Δ so that the
    count and the update together cost exactly one Gaussian release at z (Andrew et al. §3.1).
    Distributed noise is the Skellam mechanism, accounted by its own RDP bound at the worst case
    a round of the job can reach (``fl_rounds_dp_distributed``).
    """
    if distributed_noise_active(config):
        release = worst_case_release(config=config, invited=invited)
        return skellam_epsilon([(release, rounds)], delta=config.dp_delta)
    return epsilon_spent(
        noise_multiplier=config.dp_noise_multiplier,
        sampling_probability=fl_sampling_probability(config=config, invited=invited),
        rounds=rounds,
        delta=config.dp_delta,
        accountant=config.dp_accountant or "rdp",
    )


def fl_rounds_allowed(*, config: FlConfig, invited: int, limit: int) -> int:
    """The most rounds (at most ``limit``) whose ε stays within the budget.

    Galloping from one round, then bisecting: every evaluation is near the budget rather than at
    ``limit`` rounds, where a PLD accountant on a large ε is slow (minutes at q = 1).
    """
    budget = config.dp_epsilon

    def fits(rounds: int) -> bool:
        return fl_epsilon_after(config=config, invited=invited, rounds=rounds) <= budget

    # The common case, a budget that covers the whole plan, in one evaluation; RDP (cheap, and
    # above PLD in practice) first keeps PLD away from a large ε.
    rdp_at_limit = epsilon_spent(
        noise_multiplier=config.dp_noise_multiplier,
        sampling_probability=fl_sampling_probability(config=config, invited=invited),
        rounds=limit,
        delta=config.dp_delta,
        accountant="rdp",
    )
    if rdp_at_limit <= 2 * budget and fits(limit):
        return limit
    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)  # low fits, high does not (or is past the limit)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def _spending_rounds_before(job: Job, round_number: int) -> int:
    """Rounds of the job numbered below ``round_number`` that spend (all but failed ones)."""
    return (
        Round.objects.for_tenant(job.tenant)
        .filter(job=job, number__lt=round_number)
        .exclude(status=RoundStatus.FAILED)
        .count()
    )


def fl_privacy_admit(*, job: Job, round_number: int) -> None:
    """Refuse round ``round_number`` of ``job`` if it would take ε past the tenant's budget.

    No-op without differential privacy. Raises ``ValidationError`` with what was spent and what
    the round would cost. The caller holds the job's row lock (start, resume, round_open), so
    two rounds cannot both be admitted on the last of the budget.
    """
    config = job.fl_config
    if config is None or not config.differential_privacy:
        return
    spending = _spending_rounds_before(job, round_number) + 1
    allowed = config.dp_rounds_allowed or 0
    if spending <= allowed:
        return
    invited = fl_cohort_invited(config=config)
    spent = fl_epsilon_after(config=config, invited=invited, rounds=spending - 1)
    would = fl_epsilon_after(config=config, invited=invited, rounds=spending)
    raise ValidationError(
        f"The privacy budget is spent: ε = {spent:.3g} of {config.dp_epsilon:g} (δ = "
        f"{config.dp_delta:g}) after {spending - 1} rounds; round {round_number} would reach "
        f"ε = {would:.3g}. The budget allows {allowed} rounds."
    )


def fl_privacy_record(*, round: Round) -> Round:  # noqa: A002 - the model's name
    """Store the job's cumulative ε after ``round`` on it (closed: it spent; failed: it did not).

    Call it in the transaction that closes or fails the round. Idempotent: the value depends
    only on the job's settings and which rounds up to this one did not fail.
    """
    job = round.job
    config = job.fl_config
    if config is None or not config.differential_privacy:
        return round
    if distributed_noise_active(config):
        round.epsilon_spent = _distributed_epsilon_through(job, config, round)
    else:
        spending = _spending_rounds_before(job, round.number)
        if round.status != RoundStatus.FAILED:
            spending += 1
        round.epsilon_spent = fl_epsilon_after(
            config=config, invited=fl_cohort_invited(config=config), rounds=spending
        )
    Round.objects.for_tenant(job.tenant).filter(pk=round.pk).update(
        epsilon_spent=round.epsilon_spent
    )
    return round


def _distributed_epsilon_through(job: Job, config: FlConfig, last: Round) -> float:
    """ε of the Skellam noise the job's rounds up to ``last`` actually carried (failed rounds
    released nothing)."""
    rounds = (
        Round.objects.for_tenant(job.tenant)
        .filter(job=job, number__lte=last.number)
        .exclude(status=RoundStatus.FAILED)
        .order_by("number")
    )
    releases = distributed_releases(config=config, rounds=list(rounds))
    return skellam_epsilon([(release, 1) for release in releases], delta=config.dp_delta)


@dataclass(frozen=True, slots=True)
class SecureAggregationPlan:
    """What a job's secure-aggregation settings mean at its invited cohort size n."""

    cohort_invited: int
    neighbours: int  # k = 2·⌈log2 n⌉, or n − 1 (the full graph) when that is not smaller
    threshold: int  # t = ⌊fraction·k⌋ + 1, clamped to 1..k
    min_survivors: int

    @property
    def dropout_tolerated(self) -> float:
        """The fraction of a client's neighbours that may drop while it can still be unmasked."""
        return (self.neighbours - self.threshold) / self.neighbours if self.neighbours else 0.0


def secagg_plan(*, config: FlConfig, invited: int) -> SecureAggregationPlan:
    """k, t and the minimum survivors of a job's secure aggregation over ``invited`` clients."""
    k = neighbour_count(invited)
    fraction = config.secagg_threshold_fraction or 0.5
    threshold = max(1, min(k, math.floor(fraction * k) + 1)) if k else 0
    return SecureAggregationPlan(
        cohort_invited=invited,
        neighbours=k,
        threshold=threshold,
        min_survivors=config.secagg_min_survivors or config.min_reports,
    )


def fl_secagg_plan(*, job: Job) -> SecureAggregationPlan | None:
    """The job's secure-aggregation plan (None when it does not use secure aggregation); for an
    async job, the plan of one secure group."""
    from jobs.services.fl_secagg_groups import group_size, secure_groups  # imports this module

    config = job.fl_config
    if config is None or not config.secure_aggregation:
        return None
    invited = group_size(config) if secure_groups(config) else fl_cohort_invited(config=config)
    return secagg_plan(config=config, invited=invited)


@dataclass(frozen=True, slots=True)
class PrivacyRound:
    number: int
    status: str
    epsilon_spent: float | None


@dataclass(frozen=True, slots=True)
class PrivacyState:
    """A DP job's budget as the job page and the API show it."""

    epsilon_budget: float
    delta: float
    accountant: str
    mode: str
    mechanism: str  # "gaussian" (the server noises the sum) or "skellam" (the clients' shares)
    sampling: str
    sampling_probability: float
    population: int | None
    adaptive_clipping: bool
    target_quantile: float | None
    rounds_planned: int
    rounds_allowed: int
    rounds_spending: int
    epsilon_spent: float
    rounds_left_in_budget: int
    rounds: list[PrivacyRound]  # the last MAX_ROUNDS_SHOWN, oldest first


def fl_privacy_state(*, job: Job) -> PrivacyState | None:
    """The job's budget, ε spent so far and rounds left (None without differential privacy).

    A read: ε spent is the last recorded cumulative value; no accountant runs here.
    """
    config = job.fl_config
    if config is None or not config.differential_privacy:
        return None
    rows = list(
        Round.objects.for_tenant(job.tenant)
        .filter(job=job)
        .order_by("number")
        .values_list("number", "status", "epsilon_spent")
    )
    spending = sum(1 for _, status, _ in rows if status != RoundStatus.FAILED)
    recorded = [eps for _, _, eps in rows if eps is not None]
    allowed = config.dp_rounds_allowed or 0
    return PrivacyState(
        epsilon_budget=config.dp_epsilon,
        delta=config.dp_delta,
        accountant=config.dp_accountant,
        mode=config.dp_mode or DpMode.CENTRAL,
        mechanism=DISTRIBUTED_MECHANISM if distributed_noise_active(config) else "gaussian",
        sampling=config.dp_sampling or DpSampling.VOLUNTEER,
        sampling_probability=fl_sampling_probability(
            config=config, invited=fl_cohort_invited(config=config)
        ),
        population=config.dp_population,
        adaptive_clipping=config.dp_adaptive_clipping,
        target_quantile=config.dp_target_quantile,
        rounds_planned=config.rounds,
        rounds_allowed=allowed,
        rounds_spending=spending,
        epsilon_spent=recorded[-1] if recorded else 0.0,
        rounds_left_in_budget=max(0, allowed - spending),
        rounds=[PrivacyRound(n, s, e) for n, s, e in rows[-MAX_ROUNDS_SHOWN:]],
    )
