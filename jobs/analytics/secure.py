"""Secure aggregation of analytics vectors: the fixed-point encoding a query's vector needs.

An analytics vector is not a clipped model update: per contributor each entry is a count (at
most m = ``max_rows``), a sum Σ t (at most m·w, w = hi − lo) or a sum of squares Σ t² (at most
m·w²). The encoding's bound is the largest of these over the columns (with a little headroom for
the kernel's float32 rounding, so no honest entry is clipped), and its scale is the largest power
of two at which n contributors' vectors sum in Z_2^32 without wrapping. A power of two makes the
encoding exact for counts and histogram bins, and for sums of values with few binary digits
(t · scale an integer); any other entry is rounded stochastically, off by less than one unit of
1/scale per contributor (unbiased), so the decoded sum is within n/scale of the exact one.
"""

from __future__ import annotations

import math

from jobs.analytics.spec import QuerySpec
from jobs.secagg.encoding import scale_for

HEADROOM = 1 + 2.0**-20  # float32 rounding of a sum of squares is 2^-24 relative at most


def secure_encoding(spec: QuerySpec, *, n_clients: int) -> tuple[float, float]:
    """(bound, scale) for n clients' vectors: bound ≥ every entry one vector can hold, scale a
    power of two with n · (scale · bound + 1) ≤ 2^31 − 1. Raises ValueError when not even a
    scale of 2^-30 fits (such a query cannot be summed securely by n clients)."""
    widest = max(max(1.0, column.width, column.width * column.width) for column in spec.columns)
    bound = spec.max_rows * widest * HEADROOM
    scale = 2.0 ** math.floor(math.log2(scale_for(n_clients=n_clients, bound=bound)))
    if scale < 2.0**-30:
        raise ValueError("the query's entries are too large to sum securely")
    return bound, scale
