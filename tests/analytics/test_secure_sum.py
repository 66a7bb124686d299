"""The analytics vector is what secure aggregation sums: bounded, fixed-point exact for
digits, and the masked round's decoded sum equals the vector of the union of the shards."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.analytics import Column, QuerySpec, summarize
from jobs.federated.data import load_digits
from jobs.secagg.encoding import decode_sum, encode, scale_for
from jobs.secagg.protocol import RoundConfig
from jobs.secagg.simulate import run_round

# Digits features are multiples of 1/16, so Σ t and Σ t² are multiples of 1/256: at this scale
# the fixed-point encoding is exact.
SCALE = 256.0


def test_masked_vectors_of_digits_shards_sum_to_the_union_vector_exactly() -> None:
    x = load_digits().x
    spec = QuerySpec(
        columns=tuple(Column(f"px{i}", i, 0.0, 1.0, 8) for i in (12, 27)), max_rows=700
    )
    shards = np.array_split(x, 4)
    bound = spec.max_rows * max(c.width * c.width for c in spec.columns)  # the largest entry
    assert scale_for(n_clients=len(shards), bound=bound) >= SCALE  # the sum cannot wrap
    inputs = {
        i + 1: encode(summarize(rows, spec), scale=SCALE, bound=bound)
        for i, rows in enumerate(shards)
    }
    config = RoundConfig(
        job="analytics",
        round_number=1,
        session_id=b"s" * 32,
        graph_seed=b"g",
        client_ids=tuple(inputs),
        dimension=spec.dimension,
    )
    total, server = run_round(config, inputs)
    assert server.phase == "done"
    decoded = decode_sum(total, scale=SCALE)
    expected = sum(summarize(rows, spec).astype(np.float64) for rows in shards)
    assert np.array_equal(decoded, expected)


def test_the_secure_encoding_is_a_power_of_two_that_holds_every_entry_without_wrapping() -> None:
    from jobs.analytics.secure import secure_encoding

    spec = QuerySpec(
        columns=(Column("a", 0, -2.0, 3.0, 8), Column("b", 1, 0.0, 0.5, 4)), max_rows=1000
    )
    for n in (3, 10, 1000):
        bound, scale = secure_encoding(spec, n_clients=n)
        # the largest entry is a sum of squares: 1000 rows × 5² (with float32 headroom)
        assert 1000 * 25 < bound < 1000 * 25 * 1.00001
        assert scale == 2.0 ** np.floor(np.log2(scale))
        assert n * (scale * bound + 1) <= 2**31 - 1 < n * (2 * scale * bound + 1)
    # a column narrower than 1 still leaves room for the counts (up to max_rows)
    narrow = QuerySpec(columns=(Column("c", 0, 0.0, 0.25, 2),), max_rows=7)
    assert secure_encoding(narrow, n_clients=3)[0] > 7
    with pytest.raises(ValueError, match="too large"):
        secure_encoding(
            QuerySpec(columns=(Column("d", 0, 0.0, 1e6, 2),), max_rows=1 << 24), n_clients=10
        )
