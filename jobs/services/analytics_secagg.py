"""Secure analytics rounds: the encoding their invites carry and the exact fold of their sum.

A secure analytics round runs the FL secure round's four phases unchanged (``fl_secagg``); two
things differ, and ``fl_secagg`` / ``fl_secagg_unmask`` call these hooks for them:

- the fixed-point encoding is sized for the query's vector (``jobs.analytics.secure``: a bound
  from ``max_rows`` and the columns' widths, a power-of-two scale), not for a clipped update;
- the unmasked, decoded sum *is* the round's aggregate: it is folded once in float64 for the
  survivors, each with weight 1, instead of a float32 mean folded per survivor, so a sum the
  encoding carries exactly reaches ``analytics_round_aggregate`` exactly.
"""

from __future__ import annotations

import numpy as np

from jobs.aggregation import StreamingFold
from jobs.models import Job
from jobs.services.analytics_creation import query_spec


def analytics_secagg_encoding(*, job: Job, n_clients: int) -> tuple[float, float]:
    """(bound, scale) of an analytics job's secure round over ``n_clients`` invitees."""
    from jobs.analytics.secure import secure_encoding

    return secure_encoding(query_spec(job.analytics_query), n_clients=n_clients)


def analytics_secagg_fold(*, total: np.ndarray, survivors: list[str]) -> StreamingFold:
    """The fold of a secure analytics round: the decoded sum (f64[d]) for the survivors'
    participation ids, each counted once with weight 1."""
    fold = StreamingFold(total.size)
    fold.fold_sum(survivors, np.asarray(total, dtype=np.float64))
    return fold
