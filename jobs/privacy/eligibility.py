"""Who may join a cohort protected by secure aggregation or differential privacy: the rule on
anonymous contributors (docs/security.md, "Who may join a protected cohort").

An anonymous contributor (a device token, no account) costs nothing to create, so one party can
enrol many (Sybils). Sybils weaken secure aggregation (they collude toward a client's threshold
t for free) and distributed DP (they can withhold their noise shares). The rule: at most one
worker per contributor, at most a fraction f of each cohort anonymous, and a client's threshold
counted over its accounted neighbours, on top of all its anonymous ones.
"""

from __future__ import annotations

import math

# Products f·n computed in floating point (0.29 · 100 = 28.999…) must not lose a whole member.
_ROUNDING_SLACK = 1e-9


def anonymous_cap(*, cohort: int, max_fraction: float) -> int:
    """The most anonymous members a cohort of ``cohort`` may have: ⌊f · cohort⌋."""
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError("max_fraction must be in [0, 1]")
    return math.floor(max_fraction * cohort + _ROUNDING_SLACK)


def anonymous_admissible(
    *, accounted: int, anonymous: int, target: int, max_fraction: float
) -> int:
    """How many of ``anonymous`` eligible anonymous workers may stay in the pool a cohort of up to
    ``target`` is drawn from, next to ``accounted`` accounted ones.

    Any draw of min(target, pool) members from the pool then has at most ⌊f · |cohort|⌋
    anonymous members: with enough accounted workers the cap is ⌊f · target⌋; with fewer, the
    cohort shrinks to accounted + a and a must be at most ⌊f · (accounted + a)⌋.
    """
    if min(accounted, anonymous, target) < 0:
        raise ValueError("counts must be non-negative")
    for kept in range(min(anonymous, target), 0, -1):
        cohort = min(target, accounted + kept)
        if kept <= anonymous_cap(cohort=cohort, max_fraction=max_fraction):
            return kept
    return 0


def threshold_over_accounted(*, neighbours: int, anonymous_neighbours: int, fraction: float) -> int:
    """A client's secure-aggregation threshold: t = a + ⌊φ · (k − a)⌋ + 1, clamped to k.

    k neighbours of which a are anonymous, φ the job's threshold fraction (≥ 0.5). Anonymous
    neighbours alone can never unmask the client, and on top of all of them a strict share φ of
    its accounted neighbours must collude; the price is dropout tolerance (k − t shrinks by
    about (1 − φ) · a). With a = 0 this is the plain ⌊φ · k⌋ + 1.
    """
    if neighbours <= 0:
        return 0
    if not 0 <= anonymous_neighbours <= neighbours:
        raise ValueError("anonymous_neighbours must be between 0 and neighbours")
    accounted = neighbours - anonymous_neighbours
    threshold = anonymous_neighbours + math.floor(fraction * accounted + _ROUNDING_SLACK) + 1
    return max(1, min(neighbours, threshold))
