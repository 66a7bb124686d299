"""Server-side evaluation of each new global model on the job's held-out set, in Celery.

For a public partition the held-out set is the 20 % of the data set the split kept back
(``fl_data.held_out_set``): no worker ever trains on it. After a round closes, the task
``jobs.tasks.model_version_evaluate`` runs the training kernel's own ``eval`` op on it —
the same ``.wasm`` the workers run, through wasmtime (``KernelRunner`` of the edge worker's
package) in the Celery process — and stores ``eval_loss``, ``eval_accuracy`` and
``eval_samples`` on the round and on the version. A target accuracy then stops the job on
evaluation accuracy (on train accuracy for jobs without a held-out set).
"""

from __future__ import annotations

import functools
from typing import Any

from django.db import transaction
from django.utils import timezone

from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Round, RoundStatus
from jobs.models import Job, JobStatus
from jobs.services.fl_data import has_public_partition, held_out_set
from jobs.services.fl_rounds_end import fl_job_finish, round_fail
from jobs.services.model_registry import model_version_read


@functools.lru_cache(maxsize=4)
def _kernel(name: str) -> Any:
    from jobs.federated.client import load_training_kernel  # wasmtime, only when used

    return load_training_kernel(name)


def evaluation_available(*, job: Job) -> bool:
    """Whether the server evaluates this job's versions (it has a held-out set)."""
    return has_public_partition(job.fl_config)


def model_version_evaluate(*, version_id: str) -> dict[str, Any] | None:
    """Evaluate a round's model version on the held-out set once; store the result on the
    round and the version, and complete the job if it reached its target accuracy.

    Idempotent: a version already evaluated is returned as stored. Returns None when the job
    has no held-out set (or the version is gone). The evaluation itself runs outside any transaction (no row is locked
    while the kernel runs); the write locks the round.
    """
    version = (
        ModelVersion.objects.unscoped()
        .select_related("job__fl_config", "job__tenant")
        .filter(pk=version_id)
        .first()
    )
    if version is None or version.round_id is None or not evaluation_available(job=version.job):
        return None  # deleted with its job, the initial model, or no held-out set
    job = version.job
    if "eval_accuracy" in (version.metrics or {}):
        return {k: v for k, v in version.metrics.items() if k.startswith("eval_")}
    from jobs.federated.client import evaluate

    config = job.fl_config
    x, y = held_out_set(job)
    result = evaluate(
        _kernel(config.model_kernel),
        sizes=tuple(config.model_sizes),
        weights=model_version_read(model_version=version),
        x=x,
        y=y,
    )
    measured = {
        "eval_loss": result.mean_loss,
        "eval_accuracy": result.accuracy,
        "eval_samples": result.samples,
    }
    _record(version=version, job=job, measured=measured)
    return measured


@transaction.atomic
def _record(*, version: ModelVersion, job: Job, measured: dict[str, Any]) -> None:
    from jobs import realtime

    round_ = Round.objects.unscoped().select_for_update().get(pk=version.round_id)
    round_.metrics = {**round_.metrics, **measured}
    round_.save(update_fields=["metrics"])
    ModelVersion.objects.unscoped().filter(pk=version.pk).update(
        metrics={**version.metrics, **measured}
    )
    realtime.broadcast_on_commit(
        realtime.job_group(job.pk),
        {"type": "job.round_closed", "round": round_.number, "metrics": round_.metrics},
    )
    target = job.fl_config.target_accuracy
    if target is not None and measured["eval_accuracy"] >= target:
        job_complete_at_target(job=job, accuracy=measured["eval_accuracy"], source="evaluation")


def job_complete_at_target(*, job: Job, accuracy: float, source: str) -> None:
    """Complete a running job that reached its target accuracy; a round opened meanwhile ends
    without a version (failed with the reason ``job_completed``, its invitees dropped)."""
    now = timezone.now()
    locked = (
        Job.objects.unscoped()
        .select_for_update(of=("self",))
        .select_related("fl_config", "tenant")
        .get(pk=job.pk)
    )
    if locked.status != JobStatus.RUNNING:
        return
    reason = f"target accuracy {accuracy:.4f} reached ({source})"
    fl_job_finish(locked, JobStatus.COMPLETED, reason, now)
    for round_ in (
        Round.objects.unscoped().select_for_update().filter(job_id=job.pk, status=RoundStatus.OPEN)
    ):
        round_fail(round_, locked, now, reason="job_completed")
