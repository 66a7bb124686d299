"""The protected-cohort rule's arithmetic: the anonymous cap holds for every cohort a pool can
yield, and a client's threshold counts all its anonymous neighbours plus a share of the rest."""

from __future__ import annotations

import itertools
import math

import pytest

from jobs.privacy.eligibility import (
    anonymous_admissible,
    anonymous_cap,
    threshold_over_accounted,
)

FRACTIONS = [0.0, 0.1, 0.25, 1 / 3, 0.5, 1.0]


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_every_cohort_drawn_from_the_kept_pool_respects_the_cap(fraction: float) -> None:
    for accounted, anonymous, target in itertools.product(range(8), range(8), range(1, 9)):
        kept = anonymous_admissible(
            accounted=accounted, anonymous=anonymous, target=target, max_fraction=fraction
        )
        assert 0 <= kept <= anonymous
        cohort = min(target, accounted + kept)
        # The draw may take any number of the kept anonymous members up to the cohort.
        worst = min(kept, cohort)
        assert worst <= anonymous_cap(cohort=cohort, max_fraction=fraction)
        # And no larger pool would still respect it (the rule keeps as many as it can).
        if kept < min(anonymous, target):
            more = kept + 1
            bigger = min(target, accounted + more)
            assert min(more, bigger) > anonymous_cap(cohort=bigger, max_fraction=fraction)


def test_the_cap_is_a_floor_that_survives_floating_point() -> None:
    assert anonymous_cap(cohort=100, max_fraction=0.29) == 29  # 0.29 · 100 = 28.999…
    assert anonymous_cap(cohort=3, max_fraction=0.25) == 0
    assert anonymous_cap(cohort=4, max_fraction=0.25) == 1
    with pytest.raises(ValueError, match="max_fraction"):
        anonymous_cap(cohort=4, max_fraction=1.5)


def test_only_accounted_workers_when_too_few_to_dilute_anonymous_ones() -> None:
    # 2 accounted, 5 anonymous, cohort of 4 at f = 0.25: one anonymous member needs 4 in the
    # cohort, but 2 + 1 = 3 < 4, so none may join
    assert anonymous_admissible(accounted=2, anonymous=5, target=4, max_fraction=0.25) == 0
    assert anonymous_admissible(accounted=3, anonymous=5, target=4, max_fraction=0.25) == 1
    assert anonymous_admissible(accounted=30, anonymous=50, target=40, max_fraction=0.25) == 10


def test_the_threshold_counts_every_anonymous_neighbour_plus_a_strict_majority() -> None:
    # no anonymous neighbour: the plain ⌊φk⌋ + 1
    assert threshold_over_accounted(neighbours=14, anonymous_neighbours=0, fraction=0.5) == 8
    # 4 anonymous of 14: 4 + ⌊0.5 · 10⌋ + 1 = 10
    assert threshold_over_accounted(neighbours=14, anonymous_neighbours=4, fraction=0.5) == 10
    for k in range(1, 21):
        for a in range(k + 1):
            t = threshold_over_accounted(neighbours=k, anonymous_neighbours=a, fraction=0.5)
            assert 1 <= t <= k
            if t < k:  # not clamped: the anonymous alone and half the accounted fall short
                assert t > a + math.floor(0.5 * (k - a))
    assert threshold_over_accounted(neighbours=0, anonymous_neighbours=0, fraction=0.5) == 0
