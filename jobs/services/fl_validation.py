"""Validating a federated learning job: the spec, its fields, their combinations (what
``docs/aggregation.md`` rules out: ``fl_validation_strategy``), the privacy rules and budget
(``fl_privacy_rules``) and the tier's policy, into an unsaved ``FlConfig`` with every error
keyed by field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

from jobs.fl_models import (
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
from jobs.services.fl_secagg_groups import group_min_survivors_default
from jobs.services.fl_validation_strategy import (
    check_combinations,
    check_mode,
    check_strategy_options,
)
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
    options = check_strategy_options(spec, errors)
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
    check_combinations(spec, cohort, options, errors)
    check_mode(spec, cohort, errors)
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
