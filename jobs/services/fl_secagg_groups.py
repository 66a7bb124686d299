"""Secure aggregation in buffered-async FL: secure groups of K (docs/security.md, "Secure
aggregation in async jobs").

Masks cancel only within one cohort that ran the four phases together, so an async job with
secure aggregation does not fold clients one by one: the server forms *secure groups*. A group
is a round of its own (its ``SecAggRound``, phase deadlines and fixed sets, exactly the sync
round's machinery in ``fl_secagg*``) whose cohort is ⌈K × over-selection⌉ workers not in another
open group of the job, all invited with the job's newest model version. Several groups run at
once (at most ``MAX_GROUPS_IN_FLIGHT``, and never more than the job's rounds still to go), so a
slow group does not hold up the others; each group's unmasked sum becomes one buffer step when
it arrives, on whatever the newest version is then.

Staleness is per group, not per client: under the masks the server sees only the group's sum,
so it cannot discount one member's update, and it needs none, because every member trained from
the same base version. The group's step is the mean of its clipped updates times s(τ) =
(1 + τ)^-a (a = 0 for constant weighting), τ being how many versions the job moved on since the
group formed; a group more than the staleness bound behind when its masked inputs are in is
aborted before anyone is asked for unmasking shares, so its sum is never revealed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from django.db.models import QuerySet

from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import FlConfig, FlMode, Participation, Round, RoundStatus, StalenessWeighting
from jobs.models import Job, Worker
from jobs.secagg import RoundAborted
from jobs.services.fl_privacy_rules import MIN_SECURE_COHORT

# Groups of one job in flight at once: enough to keep a volunteer pool busy while a group waits
# on its phase deadlines, few enough that the workers of one job are not all tied up in groups
# that may each abort.
MAX_GROUPS_IN_FLIGHT = 4


def secure_groups(config: FlConfig) -> bool:
    """Whether the job's rounds are secure groups (async mode with secure aggregation)."""
    return bool(config.secure_aggregation and config.mode == FlMode.ASYNC)


def group_size(config: FlConfig) -> int:
    """Workers invited to a group: the buffer K times the over-selection, rounded up."""
    return math.ceil((config.buffer_size or 1) * config.over_selection)


def group_min_survivors_default(*, buffer_size: int, min_reports: int) -> int:
    """A group's default minimum of survivors: the buffer K (capped by the minimum reports), so
    over-selection is what lets members drop; never below the secure minimum of three."""
    return max(MIN_SECURE_COHORT, min(buffer_size, min_reports))


def group_check_spec(
    *, buffer_size: Any, over_selection: Any, min_survivors: Any, errors: dict[str, str]
) -> None:
    """Creation rules of async secure jobs: a group is big enough to hide one update in a sum,
    and its minimum survivors fit in it (``fl_validation`` calls this)."""
    if not isinstance(buffer_size, int) or not isinstance(over_selection, int | float):
        return  # reported by the mode's own checks
    size = math.ceil(buffer_size * over_selection)
    if size < MIN_SECURE_COHORT:
        errors["buffer_size"] = (
            f"Secure aggregation in async mode runs over groups of K × over-selection = {size} "
            f"clients; it needs at least {MIN_SECURE_COHORT}."
        )
    elif isinstance(min_survivors, int) and min_survivors > size:
        errors["secagg_min_survivors"] = (
            f"A secure group has {size} clients (K × over-selection): the minimum survivors is "
            f"{MIN_SECURE_COHORT} to {size}."
        )


def groups_in_flight(*, job: Job) -> QuerySet[Round]:
    """The job's open groups."""
    return Round.objects.for_tenant(job.tenant).filter(
        job=job, status__in=[RoundStatus.OPEN, RoundStatus.AGGREGATING]
    )


def group_may_open(*, job: Job, config: FlConfig) -> bool:
    """Another group fits: fewer than ``MAX_GROUPS_IN_FLIGHT`` open, and the open and closed
    ones together short of the job's rounds (a failed group does not count)."""
    rounds = Round.objects.for_tenant(job.tenant).filter(job=job)
    in_flight = groups_in_flight(job=job).count()
    closed = rounds.filter(status=RoundStatus.CLOSED).count()
    return in_flight < MAX_GROUPS_IN_FLIGHT and in_flight + closed < config.rounds


def group_candidates(*, job: Job, config: FlConfig, eligible: list[Worker]) -> list[Worker]:
    """The eligible workers not in an open group of the job; [] when fewer than a group's
    minimum survivors are free (a group that could only abort is not opened)."""
    busy = set(
        Participation.objects.for_tenant(job.tenant)
        .filter(round__in=groups_in_flight(job=job))
        .values_list("worker_id", flat=True)
    )
    free = [worker for worker in eligible if worker.pk not in busy]
    needed = max(MIN_SECURE_COHORT, config.secagg_min_survivors or 0)
    return free if len(free) >= needed else []


def _staleness(round_: Round, job: Job) -> int:
    newest = (
        ModelVersion.objects.for_tenant(job.tenant)
        .filter(job=job)
        .order_by("-version")
        .values_list("version", flat=True)
        .first()
    ) or 0
    base = round_.participations.values_list("base_version", flat=True).first() or 0
    return max(0, newest - base)


def group_staleness_check(*, round_: Round, job: Job) -> None:
    """Abort a group whose base version is more than the staleness bound behind, before its
    unmasking (``fl_secagg_phases`` calls this when the masked inputs are in)."""
    config = job.fl_config
    if not secure_groups(config):
        return
    staleness = _staleness(round_, job)
    if staleness > (config.staleness_bound or 0):
        raise RoundAborted(
            f"the group is {staleness} versions stale, the bound is {config.staleness_bound}"
        )


def group_step(
    *, round_: Round, job: Job, config: FlConfig, mean_delta: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """A group's buffer step: its mean update times s(τ) = (1 + τ)^-a, and the metrics.

    Scaling the released (possibly noised) mean by a public factor is post-processing: the
    group is still exactly one DP release."""
    staleness = _staleness(round_, job)
    exponent = (
        0.0
        if config.staleness_weighting == StalenessWeighting.CONSTANT
        else (config.staleness_exponent or 0.5)
    )
    factor = (1.0 + staleness) ** -exponent
    step = (mean_delta.astype(np.float64) * factor).astype(np.float32)
    return step, {"group_staleness": staleness, "group_step_weight": factor}
