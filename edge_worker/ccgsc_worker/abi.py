"""Kernel ABI v1: input encoding, output decoding and the reducers, as pure Python.

Nothing here needs wasmtime, so the server can import it to encode tasks and reduce results.
The byte layouts are specified in docs/kernel-abi.md.
"""

from __future__ import annotations

import base64
import heapq
import math
import struct
from collections.abc import Sequence
from typing import Any

ABI_VERSION = 1

HEADER_BYTES = 32
MAX_PARAMS = 4096
MAX_INPUT_BYTES = HEADER_BYTES + 8 * MAX_PARAMS
MAX_OUTPUT_BYTES = 4 * 1024 * 1024
MAX_MODULE_BYTES = 4 * 1024 * 1024
WASM_PAGE_BYTES = 65536
MAX_INITIAL_PAGES = 256  # 16 MiB
MAX_MAXIMUM_PAGES = 1024  # 64 MiB
RECORD_BYTES = 16
MAX_BEST_K = 4096
U64_MAX = (1 << 64) - 1

ERR_BAD_INPUT = -1
ERR_OUTPUT_TOO_LARGE = -2

EXPORT_MEMORY = "memory"
EXPORT_ABI_VERSION = "ccgsc_abi_version"
EXPORT_INPUT = "ccgsc_input"
EXPORT_RUN = "ccgsc_run"
EXPORT_OUTPUT = "ccgsc_output"

REDUCERS = ("sum_u64", "best_k", "min_f64", "max_f64", "concat")

_HEADER = struct.Struct("<QQQII")
_RECORD = struct.Struct("<Qd")

Record = tuple[int, float]


class OutputError(ValueError):
    """A kernel output does not have the layout its reducer requires."""


def encode_input(lo: int, hi: int, seed: int, params: Sequence[float] = ()) -> bytes:
    """Encode one task's input bytes: header (lo, hi, seed, n_params, 0) then f64 params."""
    if not (0 <= lo <= hi <= U64_MAX):
        raise ValueError(f"need 0 <= lo <= hi < 2^64, got lo={lo} hi={hi}")
    if not 0 <= seed <= U64_MAX:
        raise ValueError(f"seed must be a u64, got {seed}")
    if len(params) > MAX_PARAMS:
        raise ValueError(f"at most {MAX_PARAMS} params, got {len(params)}")
    values = [float(p) for p in params]
    return _HEADER.pack(lo, hi, seed, len(values), 0) + struct.pack(f"<{len(values)}d", *values)


def decode_input(data: bytes) -> tuple[int, int, int, list[float]]:
    """Decode task input bytes back into (lo, hi, seed, params)."""
    if len(data) < HEADER_BYTES:
        raise ValueError("input shorter than the 32-byte header")
    lo, hi, seed, n_params, reserved = _HEADER.unpack_from(data)
    if reserved != 0 or len(data) != HEADER_BYTES + 8 * n_params:
        raise ValueError("malformed input header")
    params = list(struct.unpack_from(f"<{n_params}d", data, HEADER_BYTES))
    return lo, hi, seed, params


def _check_reducer(reducer: str) -> None:
    if reducer not in REDUCERS:
        raise ValueError(f"unknown reducer {reducer!r}; expected one of {', '.join(REDUCERS)}")


def _decode_u64s(data: bytes, length: int | None) -> list[int]:
    if len(data) % 8:
        raise OutputError(f"sum_u64 output length {len(data)} is not a multiple of 8")
    if length is not None and len(data) != 8 * length:
        raise OutputError(f"sum_u64 output has {len(data) // 8} values, expected {length}")
    return list(struct.unpack(f"<{len(data) // 8}Q", data))


def _decode_records(data: bytes, k: int | None) -> list[Record]:
    if len(data) % RECORD_BYTES:
        raise OutputError(f"record output length {len(data)} is not a multiple of 16")
    records = [_RECORD.unpack_from(data, off) for off in range(0, len(data), RECORD_BYTES)]
    if k is not None and len(records) > k:
        raise OutputError(f"{len(records)} records exceed k={k}")
    for index, value in records:
        if math.isnan(value):
            raise OutputError(f"record for index {index} has a NaN value")
    for a, b in zip(records, records[1:], strict=False):
        if (a[1], a[0]) >= (b[1], b[0]):
            raise OutputError("records are not strictly ascending by (value, index)")
    return records


def _decode_single(data: bytes) -> Record | None:
    if not data:
        return None
    if len(data) != RECORD_BYTES:
        raise OutputError(f"min/max output must be 0 or 16 bytes, got {len(data)}")
    index, value = _RECORD.unpack(data)
    if math.isnan(value):
        raise OutputError(f"record for index {index} has a NaN value")
    return index, value


def decode_output(
    reducer: str, data: bytes, *, k: int | None = None, length: int | None = None
) -> Any:
    """Decode and check one output: u64 list, record list, single record (or None), or bytes."""
    _check_reducer(reducer)
    if len(data) > MAX_OUTPUT_BYTES:
        raise OutputError(f"output of {len(data)} bytes exceeds {MAX_OUTPUT_BYTES}")
    if reducer == "sum_u64":
        return _decode_u64s(data, length)
    if reducer == "best_k":
        return _decode_records(data, k)
    if reducer in ("min_f64", "max_f64"):
        return _decode_single(data)
    return bytes(data)


def encode_records(records: Sequence[Record]) -> bytes:
    """Encode (index, value) records as the 16-byte ABI record layout."""
    return b"".join(_RECORD.pack(index, value) for index, value in records)


def reduce_outputs(reducer: str, outputs: Sequence[bytes], k: int | None = None) -> bytes:
    """Combine task outputs (in task order) into one output with the same layout."""
    _check_reducer(reducer)
    if reducer == "sum_u64":
        if not outputs:
            return b""
        vectors = [_decode_u64s(out, None) for out in outputs]
        width = len(vectors[0])
        if any(len(v) != width for v in vectors):
            raise OutputError("sum_u64 outputs have different lengths")
        totals = [sum(column) for column in zip(*vectors, strict=True)]
        if any(t > U64_MAX for t in totals):
            raise OutputError("sum_u64 total overflows a u64")
        return struct.pack(f"<{width}Q", *totals)
    if reducer == "best_k":
        if k is not None and not 1 <= k <= MAX_BEST_K:
            raise ValueError(f"k must be in 1..{MAX_BEST_K}, got {k}")
        runs = [[(v, i) for i, v in _decode_records(out, None)] for out in outputs]
        merged = heapq.merge(*runs)
        best = list(merged) if k is None else [r for _, r in zip(range(k), merged, strict=False)]
        return encode_records([(i, v) for v, i in best])
    if reducer in ("min_f64", "max_f64"):
        singles = [s for s in (_decode_single(out) for out in outputs) if s is not None]
        if not singles:
            return b""
        if reducer == "min_f64":
            index, value = min(singles, key=lambda r: (r[1], r[0]))
        else:
            index, value = min(singles, key=lambda r: (-r[1], r[0]))
        return _RECORD.pack(index, value)
    return b"".join(outputs)


def output_to_json(reducer: str, data: bytes, *, k: int | None = None) -> Any:
    """Turn a (reduced) output into JSON-friendly data: ints, {index, value} dicts or base64."""
    decoded = decode_output(reducer, data, k=k)
    if reducer == "sum_u64":
        return decoded
    if reducer == "best_k":
        return [{"index": index, "value": value} for index, value in decoded]
    if reducer in ("min_f64", "max_f64"):
        return None if decoded is None else {"index": decoded[0], "value": decoded[1]}
    return {"base64": base64.b64encode(decoded).decode("ascii"), "bytes": len(decoded)}
