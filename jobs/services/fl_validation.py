"""Validating a federated learning job: the spec, its fields, their combinations (what
``docs/aggregation.md`` rules out), the privacy budget and the tier's policy, into an unsaved
``FlConfig`` with every error keyed by field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

from jobs.fl_models import (
    ROBUST_STRATEGIES,
    ClientOptimizer,
    Compression,
    DataSource,
    DpAccountant,
    DpMode,
    DpSampling,
    FlConfig,
    FlMode,
    Partition,
    ServerStrategy,
    StalenessWeighting,
    TrainingKernel,
)
from jobs.services.creation import MAX_SEED
from jobs.services.fl_admission import fl_cohort_invited
from jobs.services.fl_init import parameter_count
from jobs.services.fl_local_data import local_data_check
from jobs.services.fl_privacy_rules import (
    MIN_SECURE_COHORT,
    check_budget,
    check_privacy,
    is_number,
    privacy_fields,
)
from jobs.services.fl_rounds_eligibility import refuse_anonymous_fraction
from jobs.services.fl_secagg_groups import group_check_spec, group_min_survivors_default
from tenants.models import Tenant


@dataclass(frozen=True, slots=True)
class PublicDataset:
    """A public data set the site serves in partitions (never private data)."""

    name: str
    features: int
    classes: int
    samples: int
    description: str


PUBLIC_DATASETS: dict[str, PublicDataset] = {
    "digits": PublicDataset(
        "digits", 64, 10, 1797, "scikit-learn's 8×8 handwritten digits (1,797 images)"
    ),
    "mnist10k": PublicDataset(
        "mnist10k", 784, 10, 10_000, "the first 10,000 MNIST training digits (28×28)"
    ),
}

MAX_ROUNDS = 10_000
MAX_COHORT = 1_000_000  # far above any tier's cap: the tier's own limit is checked after
MAX_LAYER = 4096
MAX_PARAMETERS = 4_000_000  # 16 MB of float32: the training kernels' input limits allow it
MAX_DEADLINE_SECONDS = 24 * 3600

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


@dataclass(frozen=True, slots=True)
class FlJobSpec:
    """What a tenant asks for; validated by ``fl_job_create``. Defaults: the 2NN of McMahan et
    al. 2017 on the digits partition, 2 label shards per client, FedAvg, E = 1, B = 10."""

    name: str
    model_kernel: str = TrainingKernel.MLP
    model_sizes: list[int] = field(default_factory=lambda: [64, 200, 200, 10])
    data_source: str = DataSource.PUBLIC_PARTITION
    dataset: str = "digits"
    partition: str = Partition.SHARDS
    dirichlet_alpha: float | None = None
    shards_per_client: int | None = 2
    partition_clients: int | None = 100
    # Contributors' own data: the schema they must provide (fl_local_data) and the sample cap.
    local_data: dict[str, Any] | None = None
    max_local_samples: int | None = None
    rounds: int = 50
    cohort_size: int | None = 10
    cohort_fraction: float | None = None
    over_selection: float = 1.0
    min_reports: int | None = None
    round_deadline_seconds: int = 120
    target_accuracy: float | None = None
    local_epochs: int = 1
    batch_size: int = 10
    learning_rate: float = 0.05
    client_optimizer: str = ClientOptimizer.SGD
    momentum: float = 0.0
    proximal_mu: float = 0.0
    server_strategy: str = ServerStrategy.FEDAVG
    strategy_options: dict[str, Any] = field(default_factory=dict)
    compression: str = Compression.NONE
    topk_fraction: float | None = None
    secure_aggregation: bool = False
    differential_privacy: bool = False
    dp_noise_multiplier: float | None = None
    dp_clip_norm: float | None = None
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_accountant: str = DpAccountant.RDP
    dp_mode: str = DpMode.CENTRAL
    dp_sampling: str = DpSampling.VOLUNTEER
    dp_population: int | None = None
    dp_adaptive_clipping: bool = False
    dp_target_quantile: float | None = 0.5
    secagg_threshold_fraction: float = 0.5
    secagg_min_survivors: int | None = None
    cohort_max_anonymous_fraction: float | None = None
    mode: str = FlMode.SYNC
    buffer_size: int | None = None
    staleness_bound: int | None = None
    staleness_weighting: str = ""
    staleness_exponent: float | None = None
    seed: int | None = None


def _check_model(spec: FlJobSpec, errors: dict[str, str]) -> list[int]:
    """The architecture, checked against its kernel (and the data set's shape, if public)."""
    sizes = spec.model_sizes
    if spec.model_kernel not in TrainingKernel.values:
        errors["model_kernel"] = f"Choose one of {', '.join(TrainingKernel.values)}."
        return []
    if not isinstance(sizes, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_LAYER for s in sizes
    ):
        errors["model_sizes"] = f"Give layer sizes as a list of integers from 1 to {MAX_LAYER}."
        return []
    if spec.model_kernel == TrainingKernel.LOGREG and len(sizes) != 2:
        errors["model_sizes"] = "Logistic regression takes exactly [inputs, classes]."
    elif spec.model_kernel == TrainingKernel.MLP and not 2 <= len(sizes) <= 8:
        errors["model_sizes"] = (
            "A multilayer perceptron takes 2 to 8 sizes: [inputs, hidden…, classes]."
        )
    elif spec.model_kernel == TrainingKernel.CNN and sizes != [784, 10]:
        errors["model_sizes"] = "The CNN is fixed: [784, 10] (28×28 grey images, 10 classes)."
    elif min(sizes[-1:] or [0]) < 2:
        errors["model_sizes"] = "The last size is the number of classes: at least 2."
    if "model_sizes" in errors:
        return []
    if parameter_count(spec.model_kernel, sizes) > MAX_PARAMETERS:
        errors["model_sizes"] = f"The model has more than {MAX_PARAMETERS:,} parameters."
        return []
    return sizes


def _check_data(
    spec: FlJobSpec, sizes: list[int], errors: dict[str, str]
) -> tuple[dict[str, Any], int | None]:
    """The public partition's fields, or the local data's schema and sample cap (returned)."""
    if spec.data_source == DataSource.CONTRIBUTOR_LOCAL:
        if spec.cohort_fraction is not None:
            errors["cohort_fraction"] = (
                "With contributors' local data the number of clients is unknown: give a cohort "
                "size, not a fraction."
            )
        return local_data_check(
            schema=spec.local_data, max_samples=spec.max_local_samples, sizes=sizes, errors=errors
        )
    if spec.data_source != DataSource.PUBLIC_PARTITION:
        errors["data_source"] = f"Choose one of {', '.join(DataSource.values)}."
        return {}, None
    dataset = PUBLIC_DATASETS.get(spec.dataset)
    if dataset is None:
        errors["dataset"] = f"Choose one of {', '.join(PUBLIC_DATASETS)}."
        return {}, None
    if sizes and (sizes[0] != dataset.features or sizes[-1] != dataset.classes):
        errors["model_sizes"] = (
            f"{dataset.name} has {dataset.features} features and {dataset.classes} classes: the "
            f"sizes must start with {dataset.features} and end with {dataset.classes}."
        )
    clients = spec.partition_clients
    if not isinstance(clients, int) or not 1 <= clients <= dataset.samples:
        errors["partition_clients"] = f"Split {dataset.name} among 1 to {dataset.samples} clients."
        return {}, None
    if spec.partition == Partition.DIRICHLET:
        if not is_number(spec.dirichlet_alpha) or not 0 < spec.dirichlet_alpha <= 1000:
            errors["dirichlet_alpha"] = "Dirichlet partitions need α in (0, 1000]."
    elif spec.partition == Partition.SHARDS:
        shards = spec.shards_per_client
        if not isinstance(shards, int) or not 1 <= shards <= dataset.classes:
            errors["shards_per_client"] = f"Give 1 to {dataset.classes} shards per client."
        elif clients * shards > dataset.samples:
            errors["shards_per_client"] = (
                f"{clients} clients × {shards} shards exceed {dataset.samples} samples."
            )
    elif spec.partition != Partition.IID:
        errors["partition"] = f"Choose one of {', '.join(Partition.values)}."
    return {}, None


def _check_rounds_and_cohort(spec: FlJobSpec, errors: dict[str, str]) -> None:
    if not isinstance(spec.rounds, int) or not 1 <= spec.rounds <= MAX_ROUNDS:
        errors["rounds"] = f"Run 1 to {MAX_ROUNDS} rounds."
    if (spec.cohort_size is None) == (spec.cohort_fraction is None):
        errors["cohort_size"] = "Give either a cohort size or a cohort fraction, not both."
    elif spec.cohort_size is not None and not 1 <= spec.cohort_size <= MAX_COHORT:
        errors["cohort_size"] = f"The cohort is 1 to {MAX_COHORT:,} clients."
    elif spec.cohort_fraction is not None and not (
        is_number(spec.cohort_fraction) and 0 < spec.cohort_fraction <= 1
    ):
        errors["cohort_fraction"] = "The cohort fraction is in (0, 1]."
    if not is_number(spec.over_selection) or not 1.0 <= spec.over_selection <= 3.0:
        errors["over_selection"] = "Over-selection is a factor from 1.0 (none) to 3.0."
    if not 10 <= spec.round_deadline_seconds <= MAX_DEADLINE_SECONDS:
        errors["round_deadline_seconds"] = (
            f"The round deadline is 10 to {MAX_DEADLINE_SECONDS} seconds."
        )
    if spec.target_accuracy is not None and not (
        is_number(spec.target_accuracy) and 0 < spec.target_accuracy <= 1
    ):
        errors["target_accuracy"] = "The target accuracy is a fraction in (0, 1]."


def _check_client(spec: FlJobSpec, errors: dict[str, str]) -> None:
    if not 1 <= spec.local_epochs <= 100:
        errors["local_epochs"] = "E (local epochs) is 1 to 100."
    if not 1 <= spec.batch_size <= 65_536:
        errors["batch_size"] = "B (batch size) is 1 to 65,536."
    if not is_number(spec.learning_rate) or not 0 < spec.learning_rate <= 10:
        errors["learning_rate"] = "The learning rate is in (0, 10]."
    if spec.client_optimizer == ClientOptimizer.SGD:
        if spec.momentum != 0:
            errors["momentum"] = "Plain SGD has no momentum; choose SGD with momentum."
    elif spec.client_optimizer == ClientOptimizer.MOMENTUM:
        if not is_number(spec.momentum) or not 0 < spec.momentum < 1:
            errors["momentum"] = "Momentum is in (0, 1)."
    else:
        errors["client_optimizer"] = f"Choose one of {', '.join(ClientOptimizer.values)}."
    if not is_number(spec.proximal_mu) or not 0 <= spec.proximal_mu <= 10:
        errors["proximal_mu"] = "FedProx's μ is 0 (off) to 10."


def _strategy_options(spec: FlJobSpec, errors: dict[str, str]) -> dict[str, float]:
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


def _check_combinations(
    spec: FlJobSpec, cohort: int, options: dict, errors: dict[str, str]
) -> None:
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


def _check_mode(spec: FlJobSpec, cohort: int, errors: dict[str, str]) -> None:
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


def _unsaved_config(spec: FlJobSpec, tenant: Tenant, sizes: list[int], options: dict) -> FlConfig:
    public = spec.data_source == DataSource.PUBLIC_PARTITION
    asynchronous = spec.mode == FlMode.ASYNC
    polynomial = asynchronous and spec.staleness_weighting == StalenessWeighting.POLYNOMIAL
    return FlConfig(
        tenant=tenant,
        model_kernel=spec.model_kernel,
        model_sizes=sizes,
        parameter_count=parameter_count(spec.model_kernel, sizes) if sizes else 0,
        data_source=spec.data_source,
        dataset=spec.dataset if public else "",
        partition=spec.partition if public else "",
        dirichlet_alpha=spec.dirichlet_alpha
        if public and spec.partition == Partition.DIRICHLET
        else None,
        shards_per_client=spec.shards_per_client
        if public and spec.partition == Partition.SHARDS
        else None,
        partition_clients=spec.partition_clients if public else None,
        data_is_private=not public,
        rounds=spec.rounds,
        cohort_size=spec.cohort_size,
        cohort_fraction=spec.cohort_fraction,
        over_selection=spec.over_selection,
        min_reports=spec.min_reports or 1,
        round_deadline_seconds=spec.round_deadline_seconds,
        target_accuracy=spec.target_accuracy,
        local_epochs=spec.local_epochs,
        batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        client_optimizer=spec.client_optimizer,
        momentum=spec.momentum,
        proximal_mu=spec.proximal_mu,
        server_strategy=spec.server_strategy,
        strategy_options=options,
        compression=spec.compression,
        topk_fraction=spec.topk_fraction if spec.compression == Compression.TOPK else None,
        secure_aggregation=spec.secure_aggregation,
        differential_privacy=spec.differential_privacy,
        dp_noise_multiplier=spec.dp_noise_multiplier if spec.differential_privacy else None,
        dp_clip_norm=spec.dp_clip_norm if spec.differential_privacy else None,
        **privacy_fields(spec),
        mode=spec.mode,
        buffer_size=spec.buffer_size if asynchronous else None,
        staleness_bound=spec.staleness_bound if asynchronous else None,
        staleness_weighting=spec.staleness_weighting if asynchronous else "",
        staleness_exponent=(spec.staleness_exponent or 0.5) if polynomial else None,
    )


def fl_job_validate(*, tenant: Tenant, spec: FlJobSpec) -> FlConfig:
    """Check an FL spec field by field, then its combinations, then the tier's policy (in that
    order, so a tenant fixes its own mistakes before being told about its plan). Returns the
    unsaved configuration; raises ``ValidationError`` keyed by field."""
    errors: dict[str, str] = {}
    if not spec.name.strip():
        errors["name"] = "Give the job a name."
    sizes = _check_model(spec, errors)
    local_data, max_local_samples = _check_data(spec, sizes, errors)
    _check_rounds_and_cohort(spec, errors)
    _check_client(spec, errors)
    options = _strategy_options(spec, errors)
    if spec.seed is not None and not 0 <= spec.seed <= MAX_SEED:
        errors["seed"] = "seed must be between 0 and 2^63-1."
    if errors:
        raise ValidationError(errors)
    config = _unsaved_config(spec, tenant, sizes, options)
    config.local_data, config.max_local_samples = local_data, max_local_samples
    invited = fl_cohort_invited(config=config)
    cohort = math.ceil(invited / config.over_selection)
    if spec.min_reports is not None and not 1 <= spec.min_reports <= cohort:
        errors["min_reports"] = f"Minimum reports is 1 to the cohort ({cohort})."
    config.min_reports = spec.min_reports or cohort
    _check_combinations(spec, cohort, options, errors)
    _check_mode(spec, cohort, errors)
    check_privacy(spec, invited, config.min_reports, errors)
    if errors:
        raise ValidationError(errors)
    if config.secure_aggregation and config.secagg_min_survivors is None:
        config.secagg_min_survivors = (
            group_min_survivors_default(
                buffer_size=config.buffer_size, min_reports=config.min_reports
            )
            if config.mode == FlMode.ASYNC
            else max(MIN_SECURE_COHORT, config.min_reports)
        )
    refusals = tenant.policy.fl_refusals(
        cohort_size=invited,
        robust_aggregation=config.is_robust,
        secure_aggregation=config.secure_aggregation,
        differential_privacy=config.differential_privacy,
    )
    if refusals:
        raise ValidationError(refusals)
    refuse_anonymous_fraction(spec=spec, config=config, policy=tenant.policy)
    if config.differential_privacy:
        check_budget(config, invited)
    return config
