"""A closed FL round's new model version: the fold's mean through the server strategy (or a
close-time step, ``fl_rounds_aggregate``), the round's metrics, its metering, the broadcast, the
held-out evaluation, and the job's completion when its rounds or target accuracy are reached.

Called by ``round_close`` (``fl_rounds``) under the round's row lock, in its transaction.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
from django.db import transaction

from jobs.aggregation import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi
from jobs.federated.fedbuff import buffer_mean
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import (
    CLOSE_TIME_STRATEGIES,
    Compression,
    FlConfig,
    FlMode,
    Participation,
    Round,
    RoundStatus,
    ServerStrategy,
)
from jobs.models import Job, JobStatus
from jobs.services.fl_evaluation import evaluation_available
from jobs.services.fl_rounds_cohort import update_total_bytes
from jobs.services.fl_rounds_dp import round_release
from jobs.services.fl_rounds_dp_distributed import clients_noised
from jobs.services.fl_rounds_end import (
    fl_job_finish,
    round_closed_save,
    round_dropouts_mark,
    round_rejection_metrics,
)
from jobs.services.fl_rounds_storage import (
    fold_load,
    storage_put,
    strategy_state_key,
    strategy_state_read,
)
from jobs.services.fl_secagg_groups import group_step, secure_groups
from jobs.services.model_registry import latest_version, model_version_create, model_version_read

# Server steps on the streaming fold's mean; the robust rules (a spill of every update), q-FFL
# (each client's loss) and SCAFFOLD (two means, control variates) run at close instead
# (``fl_rounds_aggregate``).
_STRATEGIES: dict[str, Any] = {
    ServerStrategy.FEDAVG: FedAvg,
    ServerStrategy.FEDAVGM: FedAvgM,
    ServerStrategy.FEDADAM: FedAdam,
    ServerStrategy.FEDYOGI: FedYogi,
    ServerStrategy.FEDADAGRAD: FedAdagrad,
}


def _close_time_strategy(config: FlConfig) -> bool:
    """The job's server step runs at close over every update, not on the streaming mean."""
    return (
        config.server_strategy in CLOSE_TIME_STRATEGIES or config.compression == Compression.SIGNSGD
    )


def _strategy(config: FlConfig, job: Job, base: ModelVersion) -> Any:
    options = dict(config.strategy_options or {})
    cls = _STRATEGIES[config.server_strategy]
    known = {f.name for f in fields(cls)}
    strategy = cls(**{name: value for name, value in options.items() if name in known})
    state = strategy_state_read(job=job, base=base)
    if state is not None:
        strategy.load_state(state)
    return strategy


def round_aggregate(round_: Round, job: Job, config: FlConfig, now: Any) -> None:
    """Aggregate a round that met its close condition into the job's next model version."""
    from jobs import tasks  # the task module imports the services

    fold = fold_load(round=round_)
    base = latest_version(job=job)
    weights = model_version_read(model_version=base)
    folded_ids = [int(i) for i in fold.folded_ids]
    included = list(
        Participation.objects.for_tenant(job.tenant)
        .filter(pk__in=folded_ids)
        .select_related("upload")
        .order_by("pk")
    )
    samples = sum(p.samples for p in included)
    dp_metrics: dict[str, Any] = {}
    clip_norm_next = None  # DP's adaptive clipping (the streaming strategies only)
    if _close_time_strategy(config):
        from jobs.services.fl_rounds_aggregate import close_step

        step = close_step(
            job=job,
            round_=round_,
            config=config,
            base=base,
            weights=weights,
            fold=fold,
            included=included,
            state=strategy_state_read(job=job, base=base),
        )
        new_weights, state_bytes = step.weights.astype(np.float32), step.state
    else:
        strategy = _strategy(config, job, base)
        if round_.clip_norm is not None:  # DP: the clipped sum, noised, over the updates
            release = round_release(
                round=round_,
                config=config,
                fold=fold,
                server_noise=not clients_noised(config=config, round=round_),
            )
            mean_delta, dp_metrics = release.mean_delta, release.metrics
            clip_norm_next = release.clip_norm_next
        elif config.mode == FlMode.ASYNC and not config.secure_aggregation:
            # FedBuff's step divides the staleness-discounted sum by the examples (as the core's
            # BufferedAsyncServer does), so a buffer of stale updates takes a shorter step.
            mean_delta = buffer_mean(fold, examples=samples)
        else:
            mean_delta = fold.finish()
        if secure_groups(config):  # one buffer step, discounted by the group's staleness
            mean_delta, group_metrics = group_step(
                round_=round_, job=job, config=config, mean_delta=mean_delta
            )
            dp_metrics = {**dp_metrics, **group_metrics}
        new_weights = strategy.step(weights=weights, mean_delta=mean_delta).astype(np.float32)
        state_bytes = strategy.state_bytes()
    Participation.objects.for_tenant(job.tenant).filter(pk__in=folded_ids).update(included=True)
    dropouts = round_dropouts_mark(round_)
    loss = sum(p.loss_sum for p in included) / samples if samples else None
    correct = sum(p.correct for p in included)
    accuracy = correct / samples if samples else None
    model_bytes = 4 * config.parameter_count
    bytes_up = sum(update_total_bytes(config=config) for _ in included)
    bytes_down = (round_.cohort_size + round_.replacements) * model_bytes  # each got the model
    metrics = (
        {
            "train_loss": loss,
            "train_accuracy": accuracy,
            "participants": len(included),
            "invited": round_.cohort_size,
            "dropouts": dropouts,
            "replacements": round_.replacements,
            "samples": samples,
            "base_version": base.version,
            "duration_seconds": round((now - round_.started_at).total_seconds(), 3),
            "client_accuracy_std": client_accuracy_std(included),
        }
        | round_rejection_metrics(round_=round_)
        | dp_metrics
    )
    if config.mode == FlMode.ASYNC and included:
        metrics["staleness_mean"] = sum(base.version - p.base_version for p in included) / len(
            included
        )
    version = model_version_create(
        job=job, weights=new_weights, version=base.version + 1, round=round_, metrics=metrics
    )
    storage_put(strategy_state_key(job=job, version=version.version), state_bytes)
    round_.status = RoundStatus.CLOSED
    round_.closed_at = now
    round_.dropouts = dropouts
    round_.clip_norm_next = clip_norm_next
    round_.bytes_up = bytes_up
    round_.bytes_down = bytes_down
    round_.metrics = metrics | {"version": version.version}
    round_closed_save(
        round_=round_,
        job=job,
        config=config,
        folded_ids=folded_ids,
        included=included,
        bytes_transferred=bytes_up + bytes_down,
    )
    if evaluation_available(job=job):
        # Evaluated on the held-out set in Celery, which then decides the target accuracy.
        version_id = str(version.pk)
        transaction.on_commit(lambda: tasks.model_version_evaluate.delay(version_id))
    closed = Round.objects.for_tenant(job.tenant).filter(job=job, status=RoundStatus.CLOSED)
    if closed.count() >= config.rounds:
        fl_job_finish(job, JobStatus.COMPLETED, f"{config.rounds} rounds done", now)
    elif (
        not evaluation_available(job=job)
        and config.target_accuracy is not None
        and (accuracy or 0.0) >= config.target_accuracy
    ):
        # No held-out set (contributors' own data): the clients' weighted train accuracy on the
        # version they trained from.
        fl_job_finish(job, JobStatus.COMPLETED, f"target accuracy {accuracy:.4f} reached", now)


def client_accuracy_std(included: list[Participation]) -> float | None:
    """The population standard deviation of the included clients' train accuracy (the spread
    the director charts); None below two clients with samples."""
    accuracies = [p.correct / p.samples for p in included if p.samples]
    return float(np.std(accuracies)) if len(accuracies) >= 2 else None
