"""param_sweep: grid minima, exact agreement with a numpy evaluation and best_k merging."""

from __future__ import annotations

import numpy as np
import pytest

from ccgsc_worker import abi
from ccgsc_worker.kernel import KernelFailed


def grid(
    x0: float, x1: float, nx: int, y0: float, y1: float, ny: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flattened grid coordinates in the kernel's index order and operation order."""
    i = np.arange(nx * ny)
    ix, iy = (i % nx).astype(np.float64), (i // nx).astype(np.float64)
    return x0 + ((x1 - x0) * ix) / (nx - 1), y0 + ((y1 - y0) * iy) / (ny - 1)


def numpy_best(values: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k lowest values by (value, index)."""
    order = np.lexsort((np.arange(len(values)), values))[:k]
    return [(int(i), float(values[i])) for i in order]


def sweep(run_kernel, params: list[float], lo: int, hi: int) -> bytes:
    """Run param_sweep over one task."""
    return run_kernel("param_sweep", lo, hi, params=tuple(params))


def test_rosenbrock_minimum_on_grid(run_kernel) -> None:
    """The grid contains (1, 1), so the best record is exactly that point with value 0."""
    params = [0, -2.0, 2.0, 401, -1.0, 3.0, 401, 5]
    records = abi.decode_output("best_k", sweep(run_kernel, params, 0, 401 * 401), k=5)
    index, value = records[0]
    assert value == 0.0
    assert (index % 401, index // 401) == (
        300,
        200,
    )  # x = -2 + 4*300/400 = 1, y = -1 + 4*200/400 = 1
    assert len(records) == 5


@pytest.mark.parametrize("fid", [0, 1])
def test_matches_numpy_bit_for_bit(run_kernel, fid: int) -> None:
    """Rosenbrock and Himmelblau records equal a numpy evaluation in the same operation order."""
    nx, ny = 123, 77
    x, y = grid(-5.0, 5.0, nx, -4.5, 4.5, ny)
    if fid == 0:
        a, b = 1.0 - x, y - x * x
        values = a * a + 100.0 * (b * b)
    else:
        a, b = x * x + y - 11.0, x + y * y - 7.0
        values = a * a + b * b
    params = [fid, -5.0, 5.0, nx, -4.5, 4.5, ny, 64]
    got = abi.decode_output("best_k", sweep(run_kernel, params, 0, nx * ny))
    assert got == numpy_best(values, 64)


def test_rastrigin_close_to_numpy(run_kernel) -> None:
    """Rastrigin with the kernel's own cosine agrees with numpy's to ~1e-12 and finds 0 at the origin."""
    nx = ny = 101
    x, y = grid(-5.12, 5.12, nx, -5.12, 5.12, ny)
    values = (20.0 + (x * x - 10.0 * np.cos(2 * np.pi * x))) + (
        y * y - 10.0 * np.cos(2 * np.pi * y)
    )
    params = [2, -5.12, 5.12, nx, -5.12, 5.12, ny, 64]
    got = abi.decode_output("best_k", sweep(run_kernel, params, 0, nx * ny))
    assert got[0] == (50 * nx + 50, 0.0)
    for index, value in got:
        assert value == pytest.approx(values[index], abs=1e-11)
    # symmetric ties may fall either side of the cut-off, so compare the value profile
    expected = [v for _, v in numpy_best(values, 64)]
    assert [v for _, v in got] == pytest.approx(expected, abs=1e-11)


@pytest.mark.parametrize("fid", [0, 1, 2])
def test_chunked_merge_equals_whole(run_kernel, fid: int) -> None:
    """best_k over uneven chunks, merged by the reducer, equals the single-task result."""
    nx, ny, k = 90, 70, 17
    params = [fid, -3.0, 3.0, nx, -3.0, 3.0, ny, k]
    whole = sweep(run_kernel, params, 0, nx * ny)
    edges = [0, 1, 2, 500, 501, 2222, 4000, 4001, 6299, nx * ny]
    parts = [sweep(run_kernel, params, a, b) for a, b in zip(edges, edges[1:], strict=False)]
    assert abi.reduce_outputs("best_k", parts, k=k) == whole


def test_ties_keep_lowest_indices(run_kernel) -> None:
    """Symmetric Rastrigin ties are broken by index, identically when chunked."""
    nx = ny = 11
    params = [2, -5.0, 5.0, nx, -5.0, 5.0, ny, 3]
    whole = abi.decode_output("best_k", sweep(run_kernel, params, 0, nx * ny))
    assert whole[0] == (60, 0.0)
    assert whole[1][1] == whole[2][1]
    assert whole[1][0] < whole[2][0]


def test_empty_range(run_kernel) -> None:
    """An empty range yields no records."""
    assert sweep(run_kernel, [0, 0.0, 1.0, 2, 0.0, 1.0, 2, 1], 3, 3) == b""


@pytest.mark.parametrize(
    ("params", "hi"),
    [
        ([0, 0.0, 1.0, 10, 0.0, 1.0, 10], 10),  # too few params
        ([3, 0.0, 1.0, 10, 0.0, 1.0, 10, 1], 10),  # unknown function
        ([0, 0.0, 1.0, 1, 0.0, 1.0, 10, 1], 10),  # nx < 2
        ([0, 0.0, 1.0, 10.5, 0.0, 1.0, 10, 1], 10),  # non-integer nx
        ([0, 0.0, 1.0, 10, 0.0, 1.0, 10, 0], 10),  # k = 0
        ([0, 0.0, 1.0, 10, 0.0, 1.0, 10, 65], 10),  # k > 64
        ([0, float("nan"), 1.0, 10, 0.0, 1.0, 10, 1], 10),  # non-finite bound
        ([0, 0.0, float("inf"), 10, 0.0, 1.0, 10, 1], 10),
        ([0, 0.0, 1.0, 10, 0.0, 1.0, 10, 1], 101),  # hi beyond the grid
    ],
)
def test_bad_input_is_rejected(run_kernel, params: list[float], hi: int) -> None:
    """Malformed parameters make the kernel return -1."""
    with pytest.raises(KernelFailed) as info:
        sweep(run_kernel, params, 0, hi)
    assert info.value.code == abi.ERR_BAD_INPUT
