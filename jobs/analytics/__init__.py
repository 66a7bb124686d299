"""Federated analytics numerics, Django-free (docs/analytics.md).

``spec`` lays out a query's summary vector, ``vector`` is the numpy reference of the analytics
kernel (byte-identical to it), ``derive`` turns the summed vector into statistics and
quantiles, ``privacy`` gives the sensitivity and the Gaussian noise of a query.
"""

from jobs.analytics.derive import ColumnStatistics, derive_statistics, histogram_quantile
from jobs.analytics.privacy import (
    add_query_noise,
    block_noise_std,
    block_sensitivities,
    noise_multiplier_for_budget,
)
from jobs.analytics.spec import STATISTICS, Column, QuerySpec
from jobs.analytics.vector import summarize, summarize_body

__all__ = [
    "STATISTICS",
    "Column",
    "ColumnStatistics",
    "QuerySpec",
    "add_query_noise",
    "block_noise_std",
    "block_sensitivities",
    "derive_statistics",
    "histogram_quantile",
    "noise_multiplier_for_budget",
    "summarize",
    "summarize_body",
]
