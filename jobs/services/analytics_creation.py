"""Creating a federated analytics job: the query, its validation (fields, then the tier), the
round configuration it rides on, and the start.

An analytics job is an FL job whose "update" is the analytics kernel's summary vector and whose
aggregate is the plain sum of those vectors (docs/analytics.md). Its ``FlConfig`` carries the
rounds, cohort, deadline and privacy settings that the round services, the privacy budget and
the metering already read; the query (columns, bounds, bins, statistics) is ``AnalyticsQuery``.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from jobs.analytics import STATISTICS, Column, QuerySpec, noise_multiplier_for_budget
from jobs.analytics.derive import DEFAULT_QUANTILES
from jobs.analytics.secure import secure_encoding
from jobs.analytics.spec import MAX_BINS, MAX_COLUMNS, MAX_ROWS
from jobs.analytics_models import ANALYTICS_KERNEL, AnalyticsQuery
from jobs.fl_models import DataSource, DpAccountant, DpMode, DpSampling, FlConfig, Partition
from jobs.models import ACTIVE_JOB_STATUSES, Job
from jobs.services.creation import MAX_SEED
from jobs.services.lifecycle import job_event, job_start
from tenants.models import Tenant, User
from tenants.roles import Action
from tenants.services import require_role
from tenants.tiers import JobKind

DATASET_FEATURES = {"digits": 64, "mnist10k": 784}
ANALYTICS_PARTITIONS = (Partition.IID, Partition.SHARDS)
MIN_SECURE_COHORT = 3  # with two, each contributor learns the other's vector from the sum
MAX_QUANTILES = 20
MAX_ROUNDS = 1_000
MAX_EPSILON = 100.0
MAX_DELTA = 1e-3
_COLUMN_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,60}$")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class AnalyticsJobSpec:
    """An analytics job as the API and the form give it (defaults: docs/analytics.md)."""

    name: str
    columns: list[dict[str, Any]]
    statistics: list[str] = field(default_factory=lambda: list(STATISTICS))
    quantiles: list[float] = field(default_factory=lambda: list(DEFAULT_QUANTILES))
    max_rows: int = 1_000
    data_source: str = DataSource.PUBLIC_PARTITION
    dataset: str = "digits"
    partition: str = Partition.IID
    shards_per_client: int = 2
    partition_clients: int = 10
    rounds: int = 1
    cohort_size: int = 10
    min_reports: int | None = None
    round_deadline_seconds: int = 120
    secure_aggregation: bool = False
    differential_privacy: bool = False
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_accountant: str = DpAccountant.RDP
    seed: int | None = None


def _float32(value: Any) -> float | None:
    """``value`` as the float32 the kernel will use, or None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        return None
    return float(np.float32(value))


def _check_columns(spec: AnalyticsJobSpec, errors: dict[str, str]) -> list[Column]:
    public = spec.data_source == DataSource.PUBLIC_PARTITION
    features = DATASET_FEATURES.get(spec.dataset, 0)
    if not isinstance(spec.columns, list) or not 1 <= len(spec.columns) <= MAX_COLUMNS:
        errors["columns"] = f"Give 1 to {MAX_COLUMNS} columns."
        return []
    columns: list[Column] = []
    names: set[str] = set()
    for index, raw in enumerate(spec.columns):
        where = f"Column {index + 1}"
        if not isinstance(raw, dict):
            errors["columns"] = f"{where}: an object with name, lo, hi and bins."
            return []
        name = raw.get("name")
        if not isinstance(name, str) or not _COLUMN_NAME.match(name):
            errors["columns"] = f"{where}: name is 1 to 60 letters, digits, '_', '.' or '-'."
            return []
        if name in names:
            errors["columns"] = f"{where}: the name {name!r} is used twice."
            return []
        names.add(name)
        feature = raw.get("feature", index if not public else None)
        if public and (
            isinstance(feature, bool)
            or not isinstance(feature, int)
            or not 0 <= feature < max(features, 1)
        ):
            errors["columns"] = (
                f"{where}: feature is the index 0 to {features - 1} in {spec.dataset}."
            )
            return []
        lo, hi = _float32(raw.get("lo")), _float32(raw.get("hi"))
        if lo is None or hi is None or not lo < hi:
            errors["columns"] = f"{where}: lo and hi are finite numbers with lo < hi."
            return []
        bins = raw.get("bins", 10)
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
            errors["columns"] = f"{where}: bins is 1 to {MAX_BINS}."
            return []
        columns.append(Column(name, feature if public else index, lo, hi, bins))
    return columns


def _check_query(spec: AnalyticsJobSpec, errors: dict[str, str]) -> None:
    if not spec.name.strip():
        errors["name"] = "Give the job a name."
    if not spec.statistics or any(s not in STATISTICS for s in spec.statistics):
        errors["statistics"] = f"Choose among {', '.join(STATISTICS)}."
    if len(spec.quantiles) > MAX_QUANTILES or any(
        isinstance(q, bool) or not isinstance(q, int | float) or not 0 <= q <= 1
        for q in spec.quantiles
    ):
        errors["quantiles"] = f"At most {MAX_QUANTILES} quantiles, each from 0 to 1."
    if not 1 <= spec.max_rows <= MAX_ROWS:
        errors["max_rows"] = f"Each contributor uses 1 to {MAX_ROWS:,} rows."
    if spec.data_source not in DataSource.values:
        errors["data_source"] = "public_partition or contributor_local."
    elif spec.data_source == DataSource.PUBLIC_PARTITION:
        if spec.dataset not in DATASET_FEATURES:
            errors["dataset"] = "digits or mnist10k."
        if spec.partition not in ANALYTICS_PARTITIONS:
            errors["partition"] = "iid or shards."
        if not 1 <= spec.partition_clients <= 100_000:
            errors["partition_clients"] = "1 to 100,000 clients."
        if not 1 <= spec.shards_per_client <= 100:
            errors["shards_per_client"] = "1 to 100 shards per client."
    if not 1 <= spec.rounds <= MAX_ROUNDS:
        errors["rounds"] = f"1 to {MAX_ROUNDS} rounds."
    if not 1 <= spec.cohort_size <= 1_000_000:
        errors["cohort_size"] = "1 to 1,000,000 contributors a round."
    elif spec.min_reports is not None and not 1 <= spec.min_reports <= spec.cohort_size:
        errors["min_reports"] = f"Minimum reports is 1 to the cohort ({spec.cohort_size})."
    if not 10 <= spec.round_deadline_seconds <= 86_400:
        errors["round_deadline_seconds"] = "10 s to 24 h."
    if spec.seed is not None and not 0 <= spec.seed <= MAX_SEED:
        errors["seed"] = "seed must be between 0 and 2^63-1."
    if spec.secure_aggregation and spec.cohort_size < MIN_SECURE_COHORT:
        errors["secure_aggregation"] = (
            f"Secure aggregation needs at least {MIN_SECURE_COHORT} contributors a round: with "
            "two, each learns the other's vector from the sum."
        )
    if spec.differential_privacy:
        if spec.dp_epsilon is None or not 0 < spec.dp_epsilon <= MAX_EPSILON:
            errors["dp_epsilon"] = f"The budget ε is required, in (0, {MAX_EPSILON:g}]."
        if not 0 < spec.dp_delta < MAX_DELTA:
            errors["dp_delta"] = f"δ is in (0, {MAX_DELTA:g})."
        if spec.dp_accountant not in DpAccountant.values:
            errors["dp_accountant"] = "rdp or pld."


def _noise_multiplier(spec: AnalyticsJobSpec) -> float:
    # Calibrated with RDP whatever the job's accountant: RDP's ε bounds PLD's from above, so the
    # plan fits either way, and a PLD bisection (dozens of PLD evaluations) would hold up the
    # request. The job's own accountant still records ε after each round.
    try:
        return noise_multiplier_for_budget(
            epsilon=float(spec.dp_epsilon or 0),
            delta=spec.dp_delta,
            rounds=spec.rounds,
            accountant="rdp",
        )
    except ValueError:
        raise ValidationError(
            {
                "dp_epsilon": (
                    f"ε = {spec.dp_epsilon:g} cannot cover {spec.rounds} rounds at δ = "
                    f"{spec.dp_delta:g} even with noise multiplier 100: raise ε or plan fewer "
                    "rounds."
                )
            }
        ) from None


def analytics_job_validate(*, tenant: Tenant, spec: AnalyticsJobSpec) -> tuple[FlConfig, QuerySpec]:
    """Check the query field by field, then the tier; returns the unsaved round configuration
    and the query. Raises ``ValidationError`` keyed by field."""
    errors: dict[str, str] = {}
    _check_query(spec, errors)
    columns = _check_columns(spec, errors) if "dataset" not in errors else []
    if errors:
        raise ValidationError(errors)
    query = QuerySpec(columns=tuple(columns), max_rows=spec.max_rows)
    if spec.secure_aggregation:
        try:  # the cohort's vectors must sum in Z_2^32 (analytics rounds do not over-select)
            secure_encoding(query, n_clients=spec.cohort_size)
        except ValueError:
            raise ValidationError(
                {
                    "secure_aggregation": (
                        "The columns' ranges and max_rows are too large for secure aggregation "
                        f"over {spec.cohort_size} contributors: narrow [lo, hi], lower max_rows "
                        "or the cohort."
                    )
                }
            ) from None
    refusals = tenant.policy.analytics_refusals(
        cohort_size=spec.cohort_size,
        secure_aggregation=spec.secure_aggregation,
        differential_privacy=spec.differential_privacy,
    )
    if refusals:
        raise ValidationError(refusals)
    public = spec.data_source == DataSource.PUBLIC_PARTITION
    private = spec.differential_privacy
    min_reports = spec.min_reports or spec.cohort_size
    config = FlConfig(
        tenant=tenant,
        model_kernel=ANALYTICS_KERNEL,
        model_sizes=[],
        parameter_count=query.dimension,
        data_source=spec.data_source,
        dataset=spec.dataset if public else "",
        partition=spec.partition if public else "",
        shards_per_client=spec.shards_per_client
        if public and spec.partition == Partition.SHARDS
        else None,
        partition_clients=spec.partition_clients if public else None,
        data_is_private=not public,
        rounds=spec.rounds,
        cohort_size=spec.cohort_size,
        min_reports=min_reports,
        round_deadline_seconds=spec.round_deadline_seconds,
        local_epochs=1,
        batch_size=1,
        learning_rate=0.0,
        client_optimizer="sgd",
        server_strategy="fedavg",  # unused: the round's aggregate is the sum, not a step
        secure_aggregation=spec.secure_aggregation,
        secagg_threshold_fraction=0.5 if spec.secure_aggregation else None,
        secagg_min_survivors=max(MIN_SECURE_COHORT, min_reports)
        if spec.secure_aggregation
        else None,
        differential_privacy=private,
        # The query's vector is scaled to L2 sensitivity 1 (jobs.analytics.privacy), so the
        # clip norm in those units is 1 and z is calibrated so every planned round fits.
        dp_noise_multiplier=_noise_multiplier(spec) if private else None,
        dp_clip_norm=1.0 if private else None,
        dp_epsilon=spec.dp_epsilon if private else None,
        dp_delta=spec.dp_delta if private else None,
        dp_accountant=spec.dp_accountant if private else "",
        dp_mode=DpMode.CENTRAL if private else "",
        dp_sampling=DpSampling.VOLUNTEER if private else "",
        dp_rounds_allowed=spec.rounds if private else None,
    )
    return config, query


@transaction.atomic
def analytics_job_create(
    *,
    tenant: Tenant,
    actor: User | None,
    actor_role: str,
    spec: AnalyticsJobSpec,
    start: bool = True,
) -> Job:
    """Validate an analytics job against the tier, store its round configuration and query,
    and start it (admitting one round's cost and, with DP, its ε)."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    if not tenant.is_active:
        raise PermissionDenied("This tenant is suspended.")
    policy = tenant.policy
    if not policy.allows_job_kind(JobKind.ANALYTICS):
        raise PermissionDenied(f"{policy.label} does not include federated analytics jobs.")
    config, query = analytics_job_validate(tenant=tenant, spec=spec)
    running = Job.objects.for_tenant(tenant).filter(status__in=ACTIVE_JOB_STATUSES).count()
    if running >= policy.max_concurrent_jobs:
        raise ValidationError(
            {"name": f"{policy.label} runs at most {policy.max_concurrent_jobs} jobs at once."}
        )
    config.save()
    job = Job.objects.create(
        tenant=tenant,
        name=spec.name.strip()[:120],
        kind=JobKind.ANALYTICS,
        fl_config=config,
        seed=secrets.randbelow(MAX_SEED) if spec.seed is None else spec.seed,
        created_by=actor,
    )
    AnalyticsQuery.objects.create(
        tenant=tenant,
        job=job,
        columns=[
            {"name": c.name, "feature": c.feature, "lo": c.lo, "hi": c.hi, "bins": c.bins}
            for c in query.columns
        ],
        statistics=list(spec.statistics),
        quantiles=[float(q) for q in spec.quantiles],
        max_rows=query.max_rows,
    )
    job_event(
        job=job,
        kind="created",
        message=(
            f"analytics over {len(query.columns)} columns (vector of {query.dimension:,}), "
            f"{config.rounds} round(s) of {config.cohort_size} contributors"
        ),
    )
    if start:
        job = job_start(job=job, actor_role=actor_role)
    return job


def query_spec(query: AnalyticsQuery) -> QuerySpec:
    """The stored query as the numerics take it."""
    return QuerySpec(
        columns=tuple(
            Column(c["name"], int(c["feature"]), float(c["lo"]), float(c["hi"]), int(c["bins"]))
            for c in query.columns
        ),
        max_rows=query.max_rows,
    )
