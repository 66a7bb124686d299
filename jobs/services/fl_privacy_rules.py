"""The privacy rules of an FL job's settings: differential privacy and secure aggregation fields,
their combinations with the cohort, and the (ε, δ) budget a job's first round must fit."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError

from jobs.fl_models import (
    CLOSE_TIME_STRATEGIES,
    DpAccountant,
    DpMode,
    DpSampling,
    FlConfig,
)
from jobs.services.fl_privacy import (
    COUNT_NOISE_CLIENTS_PER_STD,
    fl_epsilon_after,
    fl_rounds_allowed,
)

if TYPE_CHECKING:
    from jobs.services.fl_validation import FlJobSpec

MAX_EPSILON = 100.0  # past this a budget protects nothing, and PLD accounting gets slow
MAX_DELTA = 1e-3
MAX_POPULATION = 1_000_000_000
MIN_SECURE_COHORT = 3  # with two, each client learns the other's update from the sum


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_privacy(spec: FlJobSpec, invited: int, min_reports: int, errors: dict[str, str]) -> None:
    """The budget, the mechanism and secure aggregation's parameters (docs/security.md)."""
    if (spec.secure_aggregation or spec.differential_privacy) and (
        spec.server_strategy in CLOSE_TIME_STRATEGIES
    ):
        errors["server_strategy"] = (
            f"{spec.server_strategy} needs every client's own update (or loss, or control "
            "variate) at the close, so it combines with neither secure aggregation nor "
            "differential privacy: choose FedAvg, FedAvgM, FedAdam, FedYogi or FedAdagrad."
        )
    if spec.secure_aggregation:
        fraction = spec.secagg_threshold_fraction
        if not is_number(fraction) or not 0.5 <= fraction < 1:
            errors["secagg_threshold_fraction"] = (
                "The threshold t/k is in [0.5, 1): a strict majority of a client's neighbours "
                "unmasks it, and t = k would abort the round on any dropout."
            )
        survivors = spec.secagg_min_survivors
        if invited < MIN_SECURE_COHORT:
            errors["secure_aggregation"] = (
                f"Secure aggregation needs at least {MIN_SECURE_COHORT} clients a round: with "
                "two, each learns the other's update from the sum."
            )
        elif survivors is not None and not MIN_SECURE_COHORT <= survivors <= invited:
            errors["secagg_min_survivors"] = (
                f"The minimum survivors is {MIN_SECURE_COHORT} to the invited cohort ({invited})."
            )
    if not spec.differential_privacy:
        return
    if not is_number(spec.dp_epsilon) or not 0 < spec.dp_epsilon <= MAX_EPSILON:
        errors["dp_epsilon"] = f"Give the budget ε in (0, {MAX_EPSILON:g}]."
    if spec.dp_accountant not in DpAccountant.values:
        errors["dp_accountant"] = f"Choose one of {', '.join(DpAccountant.values)}."
    if spec.dp_mode not in DpMode.values:
        errors["dp_mode"] = f"Choose one of {', '.join(DpMode.values)}."
    elif spec.dp_mode == DpMode.DISTRIBUTED:
        check_distributed(spec, errors)
    delta_cap = MAX_DELTA
    if spec.dp_sampling == DpSampling.ENROLLED:
        population = spec.dp_population
        if not isinstance(population, int) or not invited <= population <= MAX_POPULATION:
            errors["dp_population"] = (
                f"State the enrolled population: {invited} (the invited cohort) to "
                f"{MAX_POPULATION:,} members."
            )
        else:
            delta_cap = min(delta_cap, 1 / population)
    elif spec.dp_sampling != DpSampling.VOLUNTEER:
        errors["dp_sampling"] = f"Choose one of {', '.join(DpSampling.values)}."
    if not is_number(spec.dp_delta) or not 0 < spec.dp_delta < delta_cap:
        errors["dp_delta"] = (
            f"δ is in (0, {delta_cap:.3g}): below 10⁻³ and below 1/population when one is stated."
        )
    if spec.dp_adaptive_clipping:
        quantile = spec.dp_target_quantile
        if not is_number(quantile) or not 0 < quantile < 1:
            errors["dp_target_quantile"] = "Give the target quantile γ of update norms in (0, 1)."
        z = spec.dp_noise_multiplier
        if is_number(z) and z > 0 and 2 * min_reports / COUNT_NOISE_CLIENTS_PER_STD <= z:
            errors.setdefault(  # distributed noise refuses adaptive clipping first, and why
                "dp_adaptive_clipping",
                f"Adaptive clipping noises the clipped count with σ_b = m/20 (m = {min_reports} "
                f"minimum reports) and needs 2σ_b > z: with z = {z:g}, at least "
                f"{math.floor(COUNT_NOISE_CLIENTS_PER_STD * z / 2) + 1} minimum reports.",
            )


def check_distributed(spec: FlJobSpec, errors: dict[str, str]) -> None:
    """What distributed (Skellam) noise combines with, and why (docs/security.md)."""
    if not spec.secure_aggregation:
        errors["dp_mode"] = (
            "Distributed noise needs secure aggregation: without masks the server would see "
            "each client's barely-noised update."
        )
    if spec.dp_adaptive_clipping:
        errors["dp_adaptive_clipping"] = (
            "Adaptive clipping needs each client's bit ‖Δ‖ ≤ C in the sum, and under secure "
            "aggregation the server cannot check that a client's bit is 0 or 1: one client "
            "could move the clip norm at will. With distributed noise, use a fixed clip norm."
        )
    if spec.dp_accountant == DpAccountant.PLD:
        errors["dp_accountant"] = (
            "Distributed noise is the Skellam mechanism, accounted by its RDP bound; dp-"
            "accounting has no PLD for it. Choose rdp."
        )
    if spec.dp_sampling == DpSampling.ENROLLED:
        errors["dp_sampling"] = (
            "Distributed noise is accounted without amplification by subsampling (q = 1): "
            "choose volunteer."
        )


def check_budget(config: FlConfig, invited: int) -> None:
    """Derive the rounds the budget allows; refuse a job whose first round alone exceeds ε."""
    allowed = fl_rounds_allowed(config=config, invited=invited, limit=config.rounds)
    if allowed == 0:
        one = fl_epsilon_after(config=config, invited=invited, rounds=1)
        raise ValidationError(
            {
                "dp_epsilon": (
                    f"One round at z = {config.dp_noise_multiplier:g} spends ε = {one:.3g} "
                    f"(δ = {config.dp_delta:g}, {config.dp_accountant.upper()}): above the "
                    f"budget ε = {config.dp_epsilon:g}, so the budget allows 0 rounds. Raise ε "
                    "or the noise multiplier z."
                )
            }
        )
    config.dp_rounds_allowed = allowed


def privacy_fields(spec: FlJobSpec) -> dict[str, Any]:
    """The budget and mechanism fields as stored: blank unless their feature is on."""
    fields: dict[str, Any] = {}
    if spec.secure_aggregation:
        fields["secagg_threshold_fraction"] = spec.secagg_threshold_fraction
        fields["secagg_min_survivors"] = spec.secagg_min_survivors
    if spec.differential_privacy:
        enrolled = spec.dp_sampling == DpSampling.ENROLLED
        adaptive = spec.dp_adaptive_clipping
        fields |= {
            "dp_epsilon": spec.dp_epsilon,
            "dp_delta": spec.dp_delta,
            "dp_accountant": spec.dp_accountant,
            "dp_mode": spec.dp_mode,
            "dp_sampling": spec.dp_sampling,
            "dp_population": spec.dp_population if enrolled else None,
            "dp_adaptive_clipping": adaptive,
            "dp_target_quantile": spec.dp_target_quantile if adaptive else None,
        }
    return fields
