"""montecarlo_pi: counter-based sampling is reproducible, splittable and accurate."""

from __future__ import annotations

import math

import numpy as np

from ccgsc_worker import abi

GAMMA = 0x9E3779B97F4A7C15
SALT = 0x6A09E667F3BCC909
MASK = (1 << 64) - 1


def mix64(z: int) -> int:
    """SplitMix64 finaliser."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference_inside(seed: int, lo: int, hi: int) -> int:
    """The documented sampling rule, in plain Python."""
    key = mix64(seed ^ SALT)
    inside = 0
    for i in range(lo, hi):
        z = mix64((key + i * GAMMA) & MASK)
        x, y = z >> 33, z & 0x7FFFFFFF
        inside += x * x + y * y < 1 << 62
    return inside


def test_same_input_same_bytes(run_kernel) -> None:
    """The same seed and range give byte-identical outputs; another seed differs."""
    a = run_kernel("montecarlo_pi", 1000, 201_003, seed=7)
    b = run_kernel("montecarlo_pi", 1000, 201_003, seed=7)
    c = run_kernel("montecarlo_pi", 1000, 201_003, seed=8)
    assert a == b
    assert a != c
    assert abi.decode_output("sum_u64", a, length=2)[1] == 200_003


def test_matches_documented_generator(run_kernel) -> None:
    """Odd-sized and unaligned ranges (SIMD body plus scalar tail) follow the documented rule."""
    for seed, lo, hi in [
        (0, 0, 0),
        (1, 0, 1),
        (2, 5, 12),
        (3, 2**40 + 1, 2**40 + 1027),
        (MASK, 17, 3000),
    ]:
        inside, samples = abi.decode_output(
            "sum_u64", run_kernel("montecarlo_pi", lo, hi, seed=seed)
        )
        assert (inside, samples) == (reference_inside(seed, lo, hi), hi - lo)


def test_near_u64_end(run_kernel) -> None:
    """Indices near 2^64 wrap the counter without trouble."""
    lo, hi = MASK - 1000, MASK
    inside, samples = abi.decode_output("sum_u64", run_kernel("montecarlo_pi", lo, hi, seed=9))
    assert (inside, samples) == (reference_inside(9, lo, hi), 1000)


def test_chunks_sum_to_whole(run_kernel) -> None:
    """Splitting [0, N) into uneven chunks and summing gives exactly the whole-range result."""
    n = 1_000_003
    whole = run_kernel("montecarlo_pi", 0, n, seed=12345)
    edges = [0, 1, 3, 4096, 99_999, 500_000, 500_001, 777_777, n]
    parts = [
        run_kernel("montecarlo_pi", a, b, seed=12345)
        for a, b in zip(edges, edges[1:], strict=False)
    ]
    assert abi.reduce_outputs("sum_u64", parts) == whole


def test_estimate_close_to_pi(run_kernel) -> None:
    """10^6 samples estimate pi within five standard errors."""
    inside, samples = abi.decode_output("sum_u64", run_kernel("montecarlo_pi", 0, 10**6, seed=2024))
    p = math.pi / 4
    sigma = 4 * math.sqrt(p * (1 - p) / samples)
    assert abs(4 * inside / samples - math.pi) < 5 * sigma


def test_numpy_vectorised_reference_agrees(run_kernel) -> None:
    """A numpy implementation of the same rule (as used by the benchmark) agrees exactly."""
    with np.errstate(over="ignore"):
        key = np.uint64(mix64(5 ^ SALT))
        idx = np.arange(10_000, 60_000, dtype=np.uint64)
        z = key + idx * np.uint64(GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        x, y = z >> np.uint64(33), z & np.uint64(0x7FFFFFFF)
        inside = int(np.count_nonzero(x * x + y * y < np.uint64(1 << 62)))
    assert (
        abi.decode_output("sum_u64", run_kernel("montecarlo_pi", 10_000, 60_000, seed=5))[0]
        == inside
    )
