"""The ``worker.round_invite`` event of an analytics round: the query instead of a model.

The consumer turns it into the ``round_invite`` message with an ``analytics`` object
(docs/protocol.md, docs/analytics.md): the kernel to run, the columns with their bounds and
bins, the row cap, and the vector length d; ``data`` and ``upload`` are the FL invite's.
"""

from __future__ import annotations

from typing import Any

from jobs.analytics_models import ANALYTICS_KERNEL
from jobs.fl_models import Participation, Round
from jobs.models import Job
from jobs.services.fl_rounds_cohort import (
    DEFAULT_CHUNK_BYTES,
    INVITE_EVENT,
    invite_data,
    update_total_bytes,
)


def analytics_invite_payload(
    *,
    job: Job,
    round: Round,  # noqa: A002 - the model's name
    participation: Participation,
    shard: int | None,
) -> dict[str, Any]:
    """The channel event inviting one contributor to an analytics round."""
    config = job.fl_config
    query = job.analytics_query
    return {
        "type": INVITE_EVENT,
        "job": str(job.pk),
        "round": round.number,
        "participation": participation.pk,
        "deadline": round.deadline.isoformat(),
        "seed": (job.seed + round.number * 1_000_003 + participation.pk) % (1 << 63),
        "analytics": {
            "kernel": ANALYTICS_KERNEL,
            "columns": list(query.columns),
            "max_rows": query.max_rows,
            "dimension": config.parameter_count,
        },
        "data": invite_data(job=job, shard=shard),
        "upload": {
            "url": "/fl/uploads/",
            "chunk_bytes": DEFAULT_CHUNK_BYTES,
            "total_bytes": update_total_bytes(config=config),
        },
    }
