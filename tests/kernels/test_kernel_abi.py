"""Pure ABI helpers: input encoding, output decoding and the reducers."""

from __future__ import annotations

import struct

import pytest

from ccgsc_worker import abi


def test_input_layout() -> None:
    """The header is lo, hi, seed, n_params, 0, then f64 params, little-endian."""
    data = abi.encode_input(1, 2**64 - 1, 3, [0.5, -2.0])
    assert len(data) == 32 + 16
    assert data[:32] == struct.pack("<QQQII", 1, 2**64 - 1, 3, 2, 0)
    assert abi.decode_input(data) == (1, 2**64 - 1, 3, [0.5, -2.0])


@pytest.mark.parametrize(("lo", "hi", "seed"), [(2, 1, 0), (-1, 1, 0), (0, 2**64, 0), (0, 1, -1)])
def test_input_rejects_bad_ranges(lo: int, hi: int, seed: int) -> None:
    """lo <= hi and all three fit in a u64."""
    with pytest.raises(ValueError, match="u64|lo <= hi"):
        abi.encode_input(lo, hi, seed)


def test_sum_reducer() -> None:
    """sum_u64 adds elementwise and refuses overflow or mixed widths."""
    outs = [struct.pack("<2Q", 1, 10), struct.pack("<2Q", 2, 20)]
    assert abi.decode_output("sum_u64", abi.reduce_outputs("sum_u64", outs)) == [3, 30]
    with pytest.raises(abi.OutputError, match="overflow"):
        abi.reduce_outputs("sum_u64", [struct.pack("<Q", 2**64 - 1)] * 2)
    with pytest.raises(abi.OutputError, match="different lengths"):
        abi.reduce_outputs("sum_u64", [b"\0" * 8, b"\0" * 16])
    assert abi.reduce_outputs("sum_u64", []) == b""


def test_best_k_reducer() -> None:
    """best_k merges sorted runs by (value, index) and keeps k."""
    a = abi.encode_records([(5, -1.0), (1, 0.0), (2, 3.0)])
    b = abi.encode_records([(0, 0.0), (7, 0.5)])
    merged = abi.reduce_outputs("best_k", [a, b], k=4)
    assert abi.decode_output("best_k", merged) == [(5, -1.0), (0, 0.0), (1, 0.0), (7, 0.5)]
    assert len(abi.decode_output("best_k", abi.reduce_outputs("best_k", [a, b]))) == 5
    with pytest.raises(abi.OutputError, match="ascending"):
        abi.reduce_outputs("best_k", [abi.encode_records([(1, 2.0), (0, 1.0)])])
    with pytest.raises(abi.OutputError, match="NaN"):
        abi.decode_output("best_k", abi.encode_records([(1, float("nan"))]))


def test_min_max_reducers() -> None:
    """min_f64 / max_f64 pick one record, ties to the lowest index; empty outputs are skipped."""
    outs = [
        abi.encode_records([(4, 2.0)]),
        b"",
        abi.encode_records([(2, 2.0)]),
        abi.encode_records([(9, -1.0)]),
    ]
    assert abi.decode_output("min_f64", abi.reduce_outputs("min_f64", outs)) == (9, -1.0)
    assert abi.decode_output("max_f64", abi.reduce_outputs("max_f64", outs)) == (2, 2.0)
    assert abi.reduce_outputs("max_f64", [b""]) == b""
    assert abi.output_to_json("min_f64", b"") is None


def test_concat_and_json() -> None:
    """concat joins in task order; output_to_json gives JSON-friendly values."""
    assert abi.reduce_outputs("concat", [b"ab", b"", b"c"]) == b"abc"
    assert abi.output_to_json("concat", b"abc") == {"base64": "YWJj", "bytes": 3}
    assert abi.output_to_json("sum_u64", struct.pack("<2Q", 1, 2)) == [1, 2]
    assert abi.output_to_json("best_k", abi.encode_records([(3, 1.5)])) == [
        {"index": 3, "value": 1.5}
    ]
    with pytest.raises(ValueError, match="unknown reducer"):
        abi.reduce_outputs("median", [])
