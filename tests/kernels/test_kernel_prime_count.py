"""prime_count: exact prime counts over sieve-sized and Miller-Rabin-sized ranges."""

from __future__ import annotations

import pytest

from ccgsc_worker import abi


def python_sieve(n: int) -> bytearray:
    """is_prime flags for 0..n-1."""
    flags = bytearray([1]) * max(n, 2)
    flags[0] = flags[1] = 0
    for p in range(2, int(n**0.5) + 1):
        if flags[p]:
            flags[p * p :: p] = bytes(len(range(p * p, len(flags), p)))
    return flags[:n]


def is_prime_mr(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 2^64 with the first twelve prime bases."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n < 2:
        return False
    for p in bases:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def count(run_kernel, lo: int, hi: int) -> int:
    """Prime count from the kernel."""
    return abi.decode_output("sum_u64", run_kernel("prime_count", lo, hi), length=1)[0]


SIEVE = python_sieve(200_000)


@pytest.mark.parametrize(
    ("lo", "hi"),
    [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
        (2, 2),
        (3, 3),
        (0, 100),
        (1, 100),
        (2, 100),
        (3, 4),
        (4, 5),
        (97, 98),
        (97, 97),
        (90, 97),
        (1000, 1000),
        (1, 200_000),
        (12_345, 187_654),
        (1_048_575, 1_048_577),
    ],
)
def test_small_ranges_match_python_sieve(run_kernel, lo: int, hi: int) -> None:
    """Small ranges, including the 0/1/2 edges and empty ranges, match a Python sieve."""
    sieve = SIEVE if hi <= len(SIEVE) else python_sieve(hi)
    assert count(run_kernel, lo, hi) == sum(sieve[lo:hi])


def test_segment_boundaries(run_kernel) -> None:
    """Ranges that start and end around a segment edge (2^19 numbers) count correctly."""
    sieve = python_sieve(1_100_000)
    edge = 1 << 19
    for lo, hi in [
        (edge - 3, edge + 3),
        (edge, 2 * edge + 1),
        (1, 2 * edge),
        (edge + 1, 1_100_000),
    ]:
        assert count(run_kernel, lo, hi) == sum(sieve[lo:hi]), (lo, hi)


def test_pi_of_ten_million(run_kernel) -> None:
    """There are 664579 primes below 10^7, as one task and as ten reduced chunks."""
    assert count(run_kernel, 1, 10**7 + 1) == 664_579
    edges = [1 + i * 10**6 for i in range(11)]
    outputs = [run_kernel("prime_count", a, b) for a, b in zip(edges, edges[1:], strict=False)]
    assert len(outputs) == 10
    reduced = abi.reduce_outputs("sum_u64", outputs)
    assert abi.decode_output("sum_u64", reduced) == [664_579]


@pytest.mark.parametrize(
    ("lo", "width"),
    [
        (1 << 42, 4_000),  # just where Miller-Rabin takes over
        ((1 << 43) + 12_345, 20_000),
        (341_550_071_728_321 - 5_000, 10_000),  # across the 7-base / 9-base bound
        (3_825_123_056_546_413_051 - 5_000, 10_000),  # across the 9-base / 12-base bound
        ((1 << 63) - 5_000, 10_000),
        ((1 << 64) - 20_000, 19_999),  # up to the last representable hi
    ],
)
def test_miller_rabin_ranges_match_python(run_kernel, lo: int, width: int) -> None:
    """Windows above 2^42 match a deterministic Python Miller-Rabin."""
    hi = lo + width
    expected = sum(1 for n in range(lo, hi) if is_prime_mr(n))
    assert expected > 0
    assert count(run_kernel, lo, hi) == expected


def test_rejects_params(run_kernel) -> None:
    """prime_count takes no parameters; passing some is bad input."""
    from ccgsc_worker.kernel import KernelFailed

    with pytest.raises(KernelFailed) as info:
        run_kernel("prime_count", 0, 10, params=(1.0,))
    assert info.value.code == abi.ERR_BAD_INPUT
