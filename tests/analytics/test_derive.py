"""Statistics derived from a summed analytics vector, against numpy over the raw rows."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.analytics import (
    Column,
    QuerySpec,
    add_query_noise,
    block_noise_std,
    derive_statistics,
    histogram_quantile,
    noise_multiplier_for_budget,
    summarize,
)
from jobs.federated.data import load_digits
from jobs.privacy.accounting import epsilon_spent

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


@pytest.mark.parametrize(("seed", "bins"), [(0, 10), (1, 40), (2, 200)])
def test_histogram_quantiles_are_within_one_bin_of_numpy(seed: int, bins: int) -> None:
    """Given skewed continuous data inside the bounds, each interpolated quantile is within one
    bin width of numpy's quantile of the raw values."""
    values = np.random.default_rng(seed).gamma(2.0, 1.5, 5_000)
    lo, hi = 0.0, float(values.max()) + 1e-6
    counts, _ = np.histogram(values, bins=bins, range=(lo, hi))
    width = (hi - lo) / bins
    for q in QUANTILES:
        estimate = histogram_quantile(counts, lo=lo, hi=hi, q=q)
        assert estimate is not None
        assert abs(estimate - np.quantile(values, q)) <= width


def test_quantile_of_an_empty_or_negative_histogram_is_none() -> None:
    assert histogram_quantile(np.zeros(4), lo=0.0, hi=1.0, q=0.5) is None
    assert histogram_quantile(np.array([-3.0, -1.0]), lo=0.0, hi=1.0, q=0.5) is None
    with pytest.raises(ValueError, match="q must be"):
        histogram_quantile(np.ones(4), lo=0.0, hi=1.0, q=1.5)


def test_quantile_interpolates_inside_the_crossing_bin() -> None:
    """[2, 2] over [0, 4]: the median is the first bin's right edge; q = 0.25 its middle."""
    assert histogram_quantile(np.array([2.0, 2.0]), lo=0.0, hi=4.0, q=0.5) == 2.0
    assert histogram_quantile(np.array([2.0, 2.0]), lo=0.0, hi=4.0, q=0.25) == 1.0
    assert histogram_quantile(np.array([0.0, 4.0]), lo=0.0, hi=4.0, q=0.0) == 2.0


def test_digits_statistics_equal_numpy_over_the_union_of_shards() -> None:
    """Shard vectors summed, then derived: counts, sums, means and histograms equal numpy's
    over all rows exactly; variances to 1e-12 relative (a different formula, same data)."""
    x = load_digits().x
    spec = QuerySpec(
        columns=tuple(Column(f"px{i}", i, 0.0, 1.0, 16) for i in (5, 19, 33, 42, 60)),
        max_rows=2_000,
    )
    total = sum(summarize(part, spec).astype(np.float64) for part in np.array_split(x, 4))
    for stats, column in zip(derive_statistics(total, spec), spec.columns, strict=True):
        values = x[:, column.feature].astype(np.float64)
        assert stats.count == values.size
        assert stats.sum == values.sum()
        assert stats.mean == values.mean()
        assert stats.variance == pytest.approx(values.var(), rel=1e-12)
        expected, _ = np.histogram(values, bins=16, range=(0.0, 1.0))
        # numpy's last bin is closed, as the kernel's is; values on inner edges go right
        assert stats.histogram == expected.astype(float).tolist()
        assert stats.edges[0] == 0.0
        assert stats.edges[-1] == 1.0
        assert len(stats.edges) == 17
        for q, value in stats.quantiles.items():
            assert abs(value - np.quantile(values, float(q))) <= 1 / 16


def test_clipping_and_shift_give_the_statistics_of_the_clipped_values() -> None:
    """Values outside [lo, hi] count as the bound; the sum is in the column's own units."""
    x = np.array([[-5.0], [10.0], [11.0], [12.0], [50.0], [np.nan]], dtype=np.float32)
    spec = QuerySpec(columns=(Column("v", 0, 10.0, 14.0, 4),), max_rows=100)
    (stats,) = derive_statistics(summarize(x, spec), spec)
    clipped = np.array([10.0, 10.0, 11.0, 12.0, 14.0])
    assert (stats.count, stats.sum, stats.mean) == (5.0, clipped.sum(), clipped.mean())
    assert stats.variance == pytest.approx(clipped.var())
    assert stats.histogram == [2.0, 1.0, 1.0, 1.0]


def test_max_rows_caps_each_contributor() -> None:
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    spec = QuerySpec(columns=(Column("v", 0, 0.0, 10.0, 2),), max_rows=3)
    (stats,) = derive_statistics(summarize(x, spec), spec)
    assert (stats.count, stats.sum, stats.histogram) == (3.0, 3.0, [3.0, 0.0])


def test_a_vector_of_the_wrong_length_is_refused() -> None:
    spec = QuerySpec(columns=(Column("v", 0, 0.0, 1.0, 2),), max_rows=1)
    with pytest.raises(ValueError, match="expected a vector of 5"):
        derive_statistics(np.zeros(4), spec)


@pytest.mark.parametrize("bad", [{"lo": 1.0, "hi": 1.0}, {"bins": 0}, {"bins": 1025}])
def test_bad_columns_are_refused(bad: dict) -> None:
    fields = {"name": "v", "feature": 0, "lo": 0.0, "hi": 1.0, "bins": 4} | bad
    with pytest.raises(ValueError, match="lo < hi"):
        QuerySpec(columns=(Column(**fields),), max_rows=1)


def test_noise_std_follows_the_block_sensitivities() -> None:
    """σ = z·Δ·√K per block, with Δ = m·(1, w, w², 1) and K = 4 blocks per column."""
    spec = QuerySpec(
        columns=(Column("a", 0, 0.0, 2.0, 2), Column("b", 1, -1.0, 2.0, 1)), max_rows=5
    )
    std = block_noise_std(spec, noise_multiplier=1.5)
    root_k = np.sqrt(8.0)
    expected = 1.5 * 5 * root_k * np.array([1, 2, 4, 1, 1, 1, 3, 9, 1])
    np.testing.assert_allclose(std, expected)
    # the scaled vector of one contributor has L2 sensitivity at most 1
    worst = 5 * np.array([1, 2, 4, 1, 0, 1, 3, 9, 1], dtype=float)  # all rows in one bin
    assert np.linalg.norm(worst / (std / 1.5)) <= 1.0 + 1e-12


def test_noise_is_gaussian_with_the_stated_std() -> None:
    spec = QuerySpec(columns=(Column("a", 0, 0.0, 1.0, 3),), max_rows=2)
    std = block_noise_std(spec, noise_multiplier=0.5)
    draws = np.stack(
        [add_query_noise(np.zeros(6), spec, noise_multiplier=0.5, rng=np.random.default_rng(s))
         for s in range(4000)]
    )  # fmt: skip
    np.testing.assert_allclose(draws.std(axis=0), std, rtol=0.05)
    assert np.all(np.abs(draws.mean(axis=0)) < 4 * std / np.sqrt(4000))


def test_noise_multiplier_is_the_smallest_that_fits_the_budget() -> None:
    z = noise_multiplier_for_budget(epsilon=1.0, delta=1e-5, rounds=2)
    spent = epsilon_spent(
        noise_multiplier=z, sampling_probability=1.0, rounds=2, delta=1e-5, accountant="rdp"
    )
    assert spent <= 1.0
    below = epsilon_spent(noise_multiplier=z * 0.99, sampling_probability=1.0, rounds=2, delta=1e-5)
    assert below > 1.0
    with pytest.raises(ValueError, match="too small"):
        noise_multiplier_for_budget(epsilon=1e-4, delta=1e-5, rounds=1000)
