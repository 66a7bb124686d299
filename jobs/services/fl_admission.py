"""What one FL round is expected to cost, and its admission through the metering port.

Kept apart from ``fl_creation`` so the lifecycle (start, resume) can admit an FL job without an
import cycle.
"""

from __future__ import annotations

import math

from django.core.exceptions import ValidationError

from jobs.fl_models import Compression, FlConfig, Round, ServerStrategy
from jobs.metering import WorkQuote, WorkRefused, metering
from jobs.models import Job

FLOAT32_BYTES = 4


def fl_cohort_invited(*, config: FlConfig) -> int:
    """Clients invited per round: the cohort (count, or fraction of the partition's clients)
    times the over-selection, rounded up."""
    if config.cohort_size is not None:
        cohort = config.cohort_size
    else:
        cohort = max(1, math.ceil((config.cohort_fraction or 0) * (config.partition_clients or 0)))
    return math.ceil(cohort * config.over_selection)


def fl_update_bytes(*, config: FlConfig) -> int:
    """Bytes of one client's upload: the update under the job's compression (headers ignored);
    SCAFFOLD sends its control-variate delta too."""
    d = config.parameter_count
    if config.compression == Compression.INT8:
        size = d
    elif config.compression == Compression.TOPK:
        size = math.ceil(d * (config.topk_fraction or 0)) * (FLOAT32_BYTES + 4)
    elif config.compression == Compression.SIGNSGD:
        size = math.ceil(d / 8)
    else:
        size = d * FLOAT32_BYTES
    vectors = 2 if config.server_strategy == ServerStrategy.SCAFFOLD else 1
    return size * vectors


def fl_round_bytes_estimate(*, config: FlConfig) -> int:
    """One round's traffic if every invited client reports: the global model down to each, and
    each one's update up."""
    download = config.parameter_count * FLOAT32_BYTES
    if config.server_strategy == ServerStrategy.SCAFFOLD:
        download *= 2  # the server control variate travels with the weights
    return fl_cohort_invited(config=config) * (download + fl_update_bytes(config=config))


def fl_job_admit(*, job: Job) -> None:
    """Admit the job's next round: within its privacy budget (``fl_privacy_admit``), then paid
    for by the money plane; a refusal becomes a ``ValidationError`` carrying the reason (the
    budget spent, or the balance)."""
    # fl_privacy needs fl_cohort_invited from here: imported on use to keep one direction.
    from jobs.services.fl_privacy import fl_privacy_admit

    rounds = Round.objects.for_tenant(job.tenant).filter(job=job)
    last = rounds.order_by("-number").values_list("number", flat=True).first() or 0
    fl_privacy_admit(job=job, round_number=last + 1)
    quote = WorkQuote(rounds=1, bytes_transferred=fl_round_bytes_estimate(config=job.fl_config))
    try:
        metering().admit(tenant=job.tenant, quote=quote)
    except WorkRefused as exc:
        raise ValidationError(str(exc)) from exc
