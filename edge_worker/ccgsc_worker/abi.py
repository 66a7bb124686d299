"""Kernel ABI v1 and v2: input encoding, output decoding and the reducers, as pure Python.

v1 (the federated-computing kernels) turns an index range and f64 parameters into a short
output that a reducer combines. v2 (the training kernels) runs one local epoch or one
evaluation pass: weights, data and hyperparameters in; metrics and the weight update out.

Nothing here needs wasmtime or numpy, so the server can import it to encode tasks and reduce
results. The byte layouts are specified in docs/kernel-abi.md.
"""

from __future__ import annotations

import base64
import heapq
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
ERR_OUT_OF_MEMORY = -3  # v2: memory.grow failed below the module's declared maximum

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


# ---- ABI v2: training kernels ------------------------------------------------------------

ABI_VERSION_V2 = 2
ABI_VERSION_V3 = 3  # analytics kernels: ccgsc_worker.analytics_abi
ABI_VERSIONS = (ABI_VERSION, ABI_VERSION_V2, ABI_VERSION_V3)

V2_HEADER_BYTES = 96
V2_METRICS_BYTES = 32
V2_MAX_SIZES = 8
V2_MAX_LAYER_SIZE = 65536
MAX_MAXIMUM_PAGES_V2 = 8192  # 512 MiB: the most any v2 module may declare

OP_TRAIN = 1
OP_EVAL = 2
OPS = {"train": OP_TRAIN, "eval": OP_EVAL}

FLAG_X_U8 = 1
FLAG_CONTROL = 2
FLAG_MOMENTUM_IN = 4
FLAG_MOMENTUM_OUT = 8

STATUS_OK = 0
STATUS_NON_FINITE_RESULT = 1
STATUS_NON_FINITE_INPUT = 2
STATUS_TEXT = {
    STATUS_OK: "ok",
    STATUS_NON_FINITE_RESULT: "the result is not finite (training diverged)",
    STATUS_NON_FINITE_INPUT: "an input (weights, control variates, momentum or X) is not finite",
}

_V2_HEADER = struct.Struct("<IIII8IIIIIQfff12x")
_V2_METRICS = struct.Struct("<IIdII d")

MIB = 1024 * 1024


@dataclass(frozen=True)
class KernelLimits:
    """What a host allows one kernel call: input and output bytes, linear memory bytes."""

    input_bytes: int
    output_bytes: int
    memory_bytes: int


# Per-kind ceilings; a kernel's manifest entry may declare lower limits, never higher ones.
KIND_LIMITS = {
    "fc": KernelLimits(MAX_INPUT_BYTES, MAX_OUTPUT_BYTES, MAX_MAXIMUM_PAGES * WASM_PAGE_BYTES),
    "train": KernelLimits(256 * MIB, 64 * MIB, MAX_MAXIMUM_PAGES_V2 * WASM_PAGE_BYTES),
    "analytics": KernelLimits(256 * MIB, 2 * MIB, MAX_MAXIMUM_PAGES_V2 * WASM_PAGE_BYTES),
}
KIND_ABI_VERSION = {"fc": ABI_VERSION, "train": ABI_VERSION_V2, "analytics": ABI_VERSION_V3}
VERSION_KIND = {version: kind for kind, version in KIND_ABI_VERSION.items()}


def limits_for(kind: str, declared: dict[str, int] | None = None) -> KernelLimits:
    """The limits of a kernel of ``kind``: its manifest's ``limits`` capped by the kind's."""
    ceiling = KIND_LIMITS[kind]
    if not declared:
        return ceiling
    values = {}
    for field in ("input_bytes", "output_bytes", "memory_bytes"):
        value = int(declared.get(field, getattr(ceiling, field)))
        if not 0 < value <= getattr(ceiling, field):
            raise ValueError(f"{field}={value} is outside 1..{getattr(ceiling, field)} for {kind}")
        values[field] = value
    return KernelLimits(**values)


def _align16(n: int) -> int:
    return (n + 15) & ~15


def _f32_section(values: Any, count: int, name: str) -> bytes:
    """Little-endian f32 bytes of ``values`` (a float32 buffer or raw bytes), padded to 16."""
    view = memoryview(values)
    if view.format in ("f", "<f", "=f"):
        raw = view.tobytes()  # C order, whatever the shape (also empty ones)
    elif view.format in ("B", "b", "c") and view.nbytes == 4 * count:
        raw = view.tobytes()
    else:
        raise ValueError(f"{name} must be float32 values or their bytes, got format {view.format}")
    if len(raw) != 4 * count:
        raise ValueError(f"{name} has {len(raw) // 4} values, expected {count}")
    return raw + b"\0" * (_align16(len(raw)) - len(raw))


# The cnn kernel's fixed architecture (docs/kernel-abi.md): pass n_params=CNN_PARAM_COUNT.
CNN_SIZES = (784, 10)
CNN_PARAM_COUNT = 1_663_370


def dense_param_count(sizes: Sequence[int]) -> int:
    """Parameters of a dense stack over ``sizes``: sum of in*out + out per layer."""
    return sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))


def encode_train_input(
    *,
    op: Literal["train", "eval"],
    sizes: Sequence[int],
    weights: Any,
    x: Any,
    y: Sequence[int] | Any,
    batch_size: int,
    seed: int = 0,
    learning_rate: float = 0.0,
    momentum: float = 0.0,
    prox_mu: float = 0.0,
    control: Any = None,
    momentum_buffer: Any = None,
    return_momentum: bool = False,
    n_params: int | None = None,
) -> bytes:
    """Encode one v2 call: header, weights, [control], [momentum], X, Y (16-byte aligned).

    ``weights``, ``control`` and ``momentum_buffer`` are float32 buffers (or their raw bytes)
    of n_params values, which defaults to the dense stack's count over ``sizes``; ``x`` is a
    float32 or uint8 buffer of n_samples x sizes[0] values (uint8 are scaled by 1/255 in the
    kernel); ``y`` holds the n_samples labels (u32).
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}")
    if not 2 <= len(sizes) <= V2_MAX_SIZES or any(not 0 < s <= V2_MAX_LAYER_SIZE for s in sizes):
        raise ValueError(f"sizes must be 2..{V2_MAX_SIZES} values in 1..{V2_MAX_LAYER_SIZE}")
    d = dense_param_count(sizes) if n_params is None else n_params
    labels = [int(v) for v in y]
    n = len(labels)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if not 0 <= seed <= U64_MAX:
        raise ValueError(f"seed must be a u64, got {seed}")
    xview = memoryview(x)
    flags = 0
    if xview.format in ("B", "<B", "=B"):
        flags |= FLAG_X_U8
        if xview.nbytes != n * sizes[0]:
            raise ValueError(f"x has {xview.nbytes} u8 values, expected {n * sizes[0]}")
        x_raw = xview.tobytes()
        x_section = x_raw + b"\0" * (_align16(len(x_raw)) - len(x_raw))
    else:
        x_section = _f32_section(x, n * sizes[0], "x")
    sections = [_f32_section(weights, d, "weights")]
    if control is not None:
        flags |= FLAG_CONTROL
        sections.append(_f32_section(control, d, "control"))
    if momentum_buffer is not None:
        flags |= FLAG_MOMENTUM_IN
        sections.append(_f32_section(momentum_buffer, d, "momentum_buffer"))
    if return_momentum:
        flags |= FLAG_MOMENTUM_OUT
    y_raw = struct.pack(f"<{n}I", *labels)
    sections += [x_section, y_raw + b"\0" * (_align16(len(y_raw)) - len(y_raw))]
    padded_sizes = [*sizes, *[0] * (V2_MAX_SIZES - len(sizes))]
    header = _V2_HEADER.pack(
        ABI_VERSION_V2,
        OPS[op],
        flags,
        len(sizes),
        *padded_sizes,
        n,
        batch_size,
        d,
        0,
        seed,
        learning_rate,
        momentum,
        prox_mu,
    )
    return header + b"".join(sections)


@dataclass(frozen=True)
class TrainResult:
    """A decoded v2 output; ``update`` and ``momentum`` are little-endian f32 bytes or None."""

    status: int
    samples: int
    loss_sum: float
    correct: int
    update_l2: float
    update: bytes | None
    momentum: bytes | None

    @property
    def ok(self) -> bool:
        """True when the kernel produced finite results."""
        return self.status == STATUS_OK

    @property
    def mean_loss(self) -> float:
        """Mean loss per sample (0 for no samples)."""
        return self.loss_sum / self.samples if self.samples else 0.0

    @property
    def accuracy(self) -> float:
        """Fraction of samples whose argmax matched the label."""
        return self.correct / self.samples if self.samples else 0.0


def decode_train_output(data: bytes, *, expect_momentum: bool = False) -> TrainResult:
    """Decode and check a v2 output: metrics header, then the update (and momentum)."""
    if len(data) < V2_METRICS_BYTES:
        raise OutputError(f"v2 output of {len(data)} bytes is shorter than its metrics header")
    status, samples, loss_sum, correct, d, norm = _V2_METRICS.unpack_from(data)
    if status not in STATUS_TEXT:
        raise OutputError(f"unknown status {status}")
    body = len(data) - V2_METRICS_BYTES
    if status != STATUS_OK:
        if body or d:
            raise OutputError("an output with an error status carries no update")
        return TrainResult(status, samples, 0.0, 0, 0.0, None, None)
    if not (math.isfinite(loss_sum) and math.isfinite(norm)):
        raise OutputError("metrics are not finite")
    expected = 4 * d * (2 if expect_momentum and d else 1)
    if body != expected:
        raise OutputError(f"v2 output carries {body} bytes after the metrics, expected {expected}")
    update = data[V2_METRICS_BYTES : V2_METRICS_BYTES + 4 * d] if d else None
    momentum = data[V2_METRICS_BYTES + 4 * d :] if expect_momentum and d else None
    return TrainResult(status, samples, loss_sum, correct, norm, update, momentum)
