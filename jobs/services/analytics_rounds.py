"""Closing an analytics round: the sum of the folded vectors becomes the round's result.

``round_close`` (``fl_rounds``) calls ``analytics_round_aggregate`` under the round's row lock
when an analytics round has enough reports. The fold added every vector with weight 1, so its
weighted sum *is* the sum over the contributors' rows; with differential privacy the server adds
the Gaussian noise of ``jobs.analytics.privacy`` to it before anything is derived or stored (the
exact sum is never written). One charge per round through the metering port, as for FL.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jobs.analytics import add_query_noise, block_noise_std, derive_statistics
from jobs.analytics_models import AnalyticsResult
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.models import Job, JobStatus
from jobs.services.analytics_creation import query_spec
from jobs.services.fl_rounds_cohort import update_total_bytes
from jobs.services.fl_rounds_end import fl_job_finish, round_closed_save, round_dropouts_mark
from jobs.services.fl_rounds_storage import fold_load


def _per_column(values: np.ndarray, lengths: list[int]) -> list[list[float]]:
    out, at = [], 0
    for length in lengths:
        out.append([float(v) for v in values[at : at + length]])
        at += length
    return out


def analytics_round_aggregate(*, round_: Round, job: Job, now: Any) -> AnalyticsResult:
    """Sum the round's vectors (noised under DP), derive the statistics, store the result,
    close the round, charge it once, and complete the job after its last round.

    The caller (``round_close``) holds the round's row lock and has checked the close condition.
    """
    config = job.fl_config
    query = job.analytics_query
    spec = query_spec(query)
    fold = fold_load(round=round_)
    total = np.array(fold.weighted_sum(), dtype=np.float64)
    noise_std = None
    if config.differential_privacy:
        total = add_query_noise(total, spec, noise_multiplier=config.dp_noise_multiplier)
        std = block_noise_std(spec, noise_multiplier=config.dp_noise_multiplier)
        noise_std = _per_column(std, [column.length for column in spec.columns])
    statistics = derive_statistics(total, spec, quantiles=query.quantiles)
    folded_ids = [int(i) for i in fold.folded_ids]
    scoped = Participation.objects.for_tenant(job.tenant)
    included = list(scoped.filter(pk__in=folded_ids))
    scoped.filter(pk__in=folded_ids).update(included=True)
    dropouts = round_dropouts_mark(round_)
    rows = sum(p.samples for p in included)
    result = AnalyticsResult.objects.create(
        tenant_id=job.tenant_id,
        job=job,
        round=round_,
        contributors=len(included),
        rows=rows,
        aggregate=[float(v) for v in total],
        statistics=[s.as_dict() for s in statistics],
        differentially_private=config.differential_privacy,
        noise_std=noise_std,
    )
    bytes_up = len(included) * update_total_bytes(config=config)
    round_.status = RoundStatus.CLOSED
    round_.closed_at = now
    round_.dropouts = dropouts
    round_.bytes_up = bytes_up
    round_.bytes_down = 0  # the kernel and public shards are cached, content-addressed files
    round_.metrics = {
        "participants": len(included),
        "invited": round_.cohort_size,
        "dropouts": dropouts,
        "replacements": round_.replacements,
        "samples": rows,
        "duration_seconds": round((now - round_.started_at).total_seconds(), 3),
        "analytics_result": result.pk,
    }
    round_closed_save(
        round_=round_,
        job=job,
        config=config,
        folded_ids=folded_ids,
        included=included,
        bytes_transferred=bytes_up,
    )
    closed = Round.objects.for_tenant(job.tenant).filter(job=job, status=RoundStatus.CLOSED)
    if closed.count() >= config.rounds:
        fl_job_finish(job, JobStatus.COMPLETED, f"{config.rounds} rounds done", now)
    return result
