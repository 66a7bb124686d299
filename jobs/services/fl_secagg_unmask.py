"""Unmasking a secure round in Celery: reconstruct, remove the masks by coordinate range, decode,
then the ordinary close (server strategy step → new model version, metering).

``secagg_unmask`` reconstructs the survivors' self-mask seeds and the dropped clients' masking
keys from the shares in PostgreSQL (the pure ``SecAggServer.close_unmask``; a failure aborts the
round). Rounds up to ``UNMASK_RANGE_COORDINATES`` are unmasked in that task; larger ones are split
into one ``secagg_unmask_range`` task per range, each rebuilding the plan (cheap: Shamir over t
shares per client) and writing its slice of the aggregate to storage; the task that writes the
last slice finalises. The aggregate (a sum over the survivors, never one client's input) is
decoded from fixed point, divided by the survivors' count, and handed to ``round_close`` as the
round's fold, folded once per survivor so every survivor is credited.
"""

from __future__ import annotations

import numpy as np
from django.core.files.storage import default_storage
from django.db import transaction

from jobs.aggregation import StreamingFold
from jobs.fl_models import Round, RoundStatus
from jobs.models import Job
from jobs.secagg import RoundAborted, UnmaskPlan, decode_sum, unmask_range
from jobs.secagg_models import SecAggPhase, SecAggRound
from jobs.services.analytics_secagg import analytics_secagg_fold
from jobs.services.fl_rounds import round_close
from jobs.services.fl_rounds_storage import (
    fold_checkpoint_key,
    storage_delete_on_commit,
    storage_put,
)
from jobs.services.fl_secagg_fold import masked_sum_range, secagg_storage_release
from jobs.services.fl_secagg_phases import secagg_abort_locked
from jobs.services.fl_secagg_state import server_for
from tenants.tiers import JobKind

UNMASK_RANGE_COORDINATES = 1 << 18


def unmask_ranges(dimension: int, size: int = UNMASK_RANGE_COORDINATES) -> list[tuple[int, int]]:
    """[start, stop) ranges covering 0..dimension."""
    return [(start, min(start + size, dimension)) for start in range(0, dimension, size)]


def range_key(*, secagg: SecAggRound, start: int) -> str:
    """Where the unmasked slice starting at ``start`` is written."""
    round_ = secagg.round
    prefix = f"fl-rounds/{round_.tenant_id}/{round_.job_id}/{round_.number}"
    return f"{prefix}/unmasked-{start:010d}.u32"


def _plan(secagg: SecAggRound, job: Job) -> UnmaskPlan:
    return server_for(secagg=secagg, job=job, until=SecAggPhase.UNMASK).close_unmask()


def secagg_unmask(*, round_id: int) -> str:
    """Reconstruct the secrets and unmask (or fan out the ranges); idempotent."""
    from jobs import tasks  # the task module imports the services

    with transaction.atomic():
        round_ = Round.objects.unscoped().select_for_update().get(pk=round_id)
        secagg = SecAggRound.objects.unscoped().select_for_update().get(round=round_)
        if secagg.phase != SecAggPhase.UNMASKING:
            return secagg.phase
        job = Job.objects.unscoped().select_related("fl_config", "tenant").get(pk=round_.job_id)
        if round_.status != RoundStatus.OPEN:
            secagg.phase, secagg.abort_reason = SecAggPhase.ABORTED, f"round {round_.status}"
            secagg.save(update_fields=["phase", "abort_reason"])
            secagg_storage_release(secagg=secagg, round_=round_)
            return secagg.phase
        try:
            plan = _plan(secagg, job)
        except RoundAborted as exc:
            secagg_abort_locked(round_=round_, secagg=secagg, job=job, reason=str(exc), now=_now())
            return SecAggPhase.ABORTED
        ranges = unmask_ranges(plan.dimension)
        if len(ranges) == 1:
            _write_range(secagg, plan, 0, plan.dimension)
            return _range_done(round_, secagg, job, 0)
        missing = [r for r in ranges if r[0] not in secagg.unmasked_ranges]
    for start, stop in missing:
        tasks.secagg_unmask_range.delay(round_id, start, stop)
    return SecAggPhase.UNMASKING


def secagg_unmask_range(*, round_id: int, start: int, stop: int) -> str:
    """Unmask coordinates [start, stop) into storage; the last range finalises the round."""
    secagg = SecAggRound.objects.unscoped().select_related("round").get(round_id=round_id)
    if secagg.phase != SecAggPhase.UNMASKING or start in secagg.unmasked_ranges:
        return secagg.phase
    job = Job.objects.unscoped().select_related("fl_config", "tenant").get(pk=secagg.round.job_id)
    _write_range(secagg, _plan(secagg, job), start, stop)
    with transaction.atomic():
        round_ = Round.objects.unscoped().select_for_update().get(pk=round_id)
        secagg = SecAggRound.objects.unscoped().select_for_update().get(round=round_)
        if secagg.phase != SecAggPhase.UNMASKING:
            return secagg.phase
        return _range_done(round_, secagg, job, start)


def _write_range(secagg: SecAggRound, plan: UnmaskPlan, start: int, stop: int) -> None:
    masked = masked_sum_range(secagg=secagg, start=start, stop=stop)
    aggregate = unmask_range(plan, masked, start=start, stop=stop)
    storage_put(range_key(secagg=secagg, start=start), aggregate.astype("<u4").tobytes())


def _range_done(round_: Round, secagg: SecAggRound, job: Job, start: int) -> str:
    if start not in secagg.unmasked_ranges:
        secagg.unmasked_ranges = sorted([*secagg.unmasked_ranges, start])
        secagg.save(update_fields=["unmasked_ranges"])
    dimension = job.fl_config.parameter_count
    starts = [s for s, _ in unmask_ranges(dimension)]
    if secagg.unmasked_ranges != starts:
        return SecAggPhase.UNMASKING
    return _finalise(round_, secagg, job, starts)


def _finalise(round_: Round, secagg: SecAggRound, job: Job, starts: list[int]) -> str:
    """Decode the aggregate, hand it to round_close as the round's fold; under both locks."""
    from jobs.services.fl_secagg_state import phase_members

    parts = []
    for start in starts:
        with default_storage.open(range_key(secagg=secagg, start=start), "rb") as handle:
            parts.append(np.frombuffer(handle.read(), dtype="<u4"))
    total = np.concatenate(parts).astype(np.uint32)
    alive = phase_members(secagg=secagg, phase=SecAggPhase.MASKED_INPUT)
    survivors = [str(secagg.clients[str(client)]) for client in alive]
    if job.kind == JobKind.ANALYTICS:  # the sum is the aggregate: kept exact, in float64
        fold = analytics_secagg_fold(
            total=decode_sum(total, scale=secagg.scale), survivors=survivors
        )
    else:
        mean = (decode_sum(total, scale=secagg.scale) / len(alive)).astype(np.float32)
        fold = StreamingFold(total.size)
        for survivor in survivors:  # once each: the mean stays the mean, each one is credited
            fold.fold(survivor, mean, 1.0)
    key = fold_checkpoint_key(round=round_, count=fold.count)
    storage_put(key, fold.checkpoint())
    round_.fold_checkpoint_key = key
    round_.reports = fold.count
    round_.save(update_fields=["fold_checkpoint_key", "reports"])
    secagg.phase = SecAggPhase.DONE
    secagg.save(update_fields=["phase"])
    storage_delete_on_commit([range_key(secagg=secagg, start=s) for s in starts])
    secagg_storage_release(secagg=secagg, round_=round_)
    round_close(round_id=round_.pk)
    return SecAggPhase.DONE


def _now():  # noqa: ANN202
    from django.utils import timezone

    return timezone.now()
