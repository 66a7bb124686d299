"""What an FL job's server strategy, compression, secure aggregation, DP and mode may be set
to, and what does not combine (``docs/aggregation.md``, "What combines with what"); each
refusal is written into ``errors`` under its field."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs.fl_models import (
    ROBUST_STRATEGIES,
    Compression,
    FlMode,
    ServerStrategy,
    StalenessWeighting,
)
from jobs.services.fl_privacy_rules import is_number
from jobs.services.fl_secagg_groups import group_check_spec

if TYPE_CHECKING:
    from jobs.services.fl_validation import FlJobSpec

# Each strategy's options, with their admissible ranges (lo, hi, inclusive) and defaults.
STRATEGY_OPTIONS: dict[str, dict[str, tuple[float, float, float]]] = {
    ServerStrategy.FEDAVG: {},
    ServerStrategy.FEDAVGM: {
        "server_learning_rate": (1e-6, 10.0, 1.0),
        "server_momentum": (0.0, 0.999, 0.9),
    },
    ServerStrategy.FEDADAM: {
        "eta": (1e-6, 10.0, 0.1),
        "beta_1": (0.0, 0.999, 0.9),
        "beta_2": (0.0, 0.9999, 0.99),
        "tau": (1e-9, 1.0, 1e-3),
    },
    ServerStrategy.FEDYOGI: {
        "eta": (1e-6, 10.0, 0.01),
        "beta_1": (0.0, 0.999, 0.9),
        "beta_2": (0.0, 0.9999, 0.99),
        "tau": (1e-9, 1.0, 1e-3),
    },
    ServerStrategy.FEDADAGRAD: {"eta": (1e-6, 10.0, 0.1), "tau": (1e-9, 1.0, 1e-3)},
    ServerStrategy.SCAFFOLD: {"global_learning_rate": (1e-6, 10.0, 1.0)},
    ServerStrategy.QFFL: {"q": (0.0, 10.0, 0.1)},
    ServerStrategy.MEDIAN: {},
    ServerStrategy.TRIMMED_MEAN: {"beta": (0.01, 0.49, 0.1)},
    ServerStrategy.KRUM: {"byzantine": (0, 1000, 1)},
    ServerStrategy.MULTI_KRUM: {"byzantine": (0, 1000, 1), "selected": (1, 10_000, 1)},
    ServerStrategy.NORM_BOUNDING: {"bound": (1e-6, 1e6, 5.0)},
}
INTEGER_OPTIONS = frozenset({"byzantine", "selected"})
# signSGD's server step w + η·sign(vote) (FedAvg only): η per coordinate, in the model's units.
SIGNSGD_OPTIONS = {"server_learning_rate": (1e-6, 1.0, 1e-3)}


def check_strategy_options(spec: FlJobSpec, errors: dict[str, str]) -> dict[str, float]:
    """The strategy's options with defaults filled in, or {} with an error."""
    allowed = STRATEGY_OPTIONS.get(spec.server_strategy)
    if spec.server_strategy == ServerStrategy.FEDAVG and spec.compression == Compression.SIGNSGD:
        allowed = SIGNSGD_OPTIONS
    if allowed is None:
        errors["server_strategy"] = f"Choose one of {', '.join(ServerStrategy.values)}."
        return {}
    given = spec.strategy_options or {}
    if not isinstance(given, dict):
        errors["strategy_options"] = "Give the strategy's options as an object."
        return {}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        names = ", ".join(allowed) or "none"
        errors["strategy_options"] = (
            f"Unknown options {unknown} for {spec.server_strategy} ({names})."
        )
        return {}
    options: dict[str, float] = {}
    for name, (lo, hi, default) in allowed.items():
        value = given.get(name, default)
        integer = name in INTEGER_OPTIONS
        if not is_number(value) or (integer and value != int(value)) or not lo <= value <= hi:
            kind = "an integer" if integer else "a number"
            errors["strategy_options"] = f"{name} must be {kind} from {lo:g} to {hi:g}."
            return {}
        options[name] = int(value) if integer else float(value)
    return options


def check_combinations(spec: FlJobSpec, cohort: int, options: dict, errors: dict[str, str]) -> None:
    """What does not combine (docs/aggregation.md, "What combines with what")."""
    strategy, compression = spec.server_strategy, spec.compression
    robust = strategy in ROBUST_STRATEGIES
    if compression not in Compression.values:
        errors["compression"] = f"Choose one of {', '.join(Compression.values)}."
        return
    if compression == Compression.TOPK:
        if not is_number(spec.topk_fraction) or not 0 < spec.topk_fraction < 1:
            errors["topk_fraction"] = "Top-k keeps a fraction in (0, 1) of the coordinates."
        if robust and strategy not in (ServerStrategy.KRUM, ServerStrategy.MULTI_KRUM):
            errors["compression"] = (
                "Top-k updates are mostly zeros: their median or trimmed mean is 0. Use Krum or "
                "no compression."
            )
        if strategy == ServerStrategy.QFFL:
            errors["compression"] = f"Top-k with {strategy} is not built."
    if compression == Compression.SIGNSGD:
        if strategy != ServerStrategy.FEDAVG:
            errors["compression"] = (
                "signSGD aggregates by majority vote, not a mean: it runs with the plain FedAvg "
                "server step only."
            )
        elif spec.mode == FlMode.ASYNC:
            errors["compression"] = (
                "signSGD's majority vote gives every client one vote: it has no weight to "
                "discount stale updates by, so it runs in sync rounds only."
            )
    if compression != Compression.NONE and strategy == ServerStrategy.SCAFFOLD:
        # SCAFFOLD uploads two vectors [Δy ‖ Δc]; neither client encodes that pair yet.
        errors["compression"] = "Compressed uploads with SCAFFOLD are not built."
    if spec.secure_aggregation:
        if robust:
            errors["secure_aggregation"] = (
                "Robust aggregation needs each update; secure aggregation hides them: choose one."
            )
        elif compression != Compression.NONE:
            errors["secure_aggregation"] = (
                f"Secure aggregation with {compression} is not built (masks are added to dense "
                "uint32 sums; a sparse, int8 or sign payload has no such sum)."
            )
        elif strategy == ServerStrategy.QFFL:
            errors["secure_aggregation"] = "Secure aggregation with q-FFL is not built."
        elif spec.mode == FlMode.ASYNC:  # masks cancel within a cohort: secure groups of K
            group_check_spec(
                buffer_size=spec.buffer_size,
                over_selection=spec.over_selection,
                min_survivors=spec.secagg_min_survivors,
                errors=errors,
            )
    if spec.differential_privacy:
        if strategy in (ServerStrategy.SCAFFOLD, ServerStrategy.QFFL) or robust:
            errors["differential_privacy"] = (
                f"Differential privacy with {strategy} is not offered: its sensitivity is "
                "unbounded or unanalysed."
            )
        elif compression != Compression.NONE:
            errors["differential_privacy"] = (
                "Differential privacy runs on uncompressed updates (the clip and the noise are "
                "calibrated to the dense update; top-k's residual carries unclipped signal "
                "across rounds and a sign vote has no norm to clip)."
            )
        if not is_number(spec.dp_noise_multiplier) or not 0 < spec.dp_noise_multiplier <= 100:
            errors["dp_noise_multiplier"] = "Give the noise multiplier z in (0, 100]."
        if not is_number(spec.dp_clip_norm) or not 0 < spec.dp_clip_norm <= 1e6:
            errors["dp_clip_norm"] = "Give the clipping norm C > 0."
    if strategy in (ServerStrategy.KRUM, ServerStrategy.MULTI_KRUM):
        byzantine = options.get("byzantine", 0)
        if cohort < 2 * byzantine + 3:
            errors["strategy_options"] = (
                f"Krum needs at least 2f + 3 = {2 * byzantine + 3} reports per round."
            )
        elif options.get("selected", 1) > cohort - byzantine:
            errors["strategy_options"] = "Multi-Krum selects at most cohort − f updates."


def check_mode(spec: FlJobSpec, cohort: int, errors: dict[str, str]) -> None:
    """Buffered-async mode's fields: the buffer K within the cohort, the staleness bound and
    weighting."""
    if spec.mode == FlMode.SYNC:
        return
    if spec.mode != FlMode.ASYNC:
        errors["mode"] = f"Choose one of {', '.join(FlMode.values)}."
        return
    if not isinstance(spec.buffer_size, int) or not 1 <= spec.buffer_size <= max(1, cohort):
        errors["buffer_size"] = f"The buffer K holds 1 to {cohort} updates (the cohort)."
    if not isinstance(spec.staleness_bound, int) or not 0 <= spec.staleness_bound <= 1000:
        errors["staleness_bound"] = "The staleness bound is 0 to 1000 model versions."
    if spec.staleness_weighting not in StalenessWeighting.values:
        errors["staleness_weighting"] = f"Choose one of {', '.join(StalenessWeighting.values)}."
    elif (
        spec.staleness_weighting == StalenessWeighting.POLYNOMIAL
        and spec.staleness_exponent is not None
    ) and (not is_number(spec.staleness_exponent) or not 0 < spec.staleness_exponent <= 4):
        errors["staleness_exponent"] = "The staleness exponent a is in (0, 4]."
