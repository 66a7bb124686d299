"""Worker protocol v1, client side: message builders, the result frame and server messages.

Pure Python (no I/O); docs/protocol.md is the contract this module follows.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ccgsc_worker import abi
from ccgsc_worker.protocol_schema import compile_check, load_definition

DEFINITION = load_definition(1)
_LIMITS = DEFINITION["limits"]
_WORKER = DEFINITION["routes"]["worker"]
_CLOSE = {info["name"]: int(code) for code, info in DEFINITION["close_codes"].items()}

PROTOCOL_VERSION: int = DEFINITION["version"]
MAX_JSON_BYTES: int = _LIMITS["max_json_bytes"]
MAX_JSON_DEPTH: int = _LIMITS["max_json_depth"]
MAX_RESULT_BYTES: int = _LIMITS["max_result_bytes"]
MAX_RESULT_HEADER_BYTES: int = _LIMITS["max_result_header_bytes"]
MAX_SLOTS: int = _LIMITS["max_slots"]
MAX_ELAPSED_MS: int = _LIMITS["max_elapsed_ms"]
MAX_ERROR_MESSAGE: int = _LIMITS["max_error_message_chars"]
EDGE_PATH = next(path for path in _WORKER["paths"] if "edge" in path)

CLOSE_UNAUTHORIZED = _CLOSE["unauthorized"]
CLOSE_PROTOCOL_VERSION = _CLOSE["protocol_version"]
CLOSE_HELLO_TIMEOUT = _CLOSE["hello_timeout"]
CLOSE_RATE_LIMITED = _CLOSE["rate_limited"]
CLOSE_TOO_LARGE = _CLOSE["too_large"]
# Close codes after which reconnecting cannot help.
FATAL_CLOSE_CODES = frozenset(
    int(code)
    for code, info in DEFINITION["close_codes"].items()
    if not info["reconnect"] and "worker" in info["routes"]
)

ERROR_CODES = tuple(DEFINITION["error_codes"]["task"])
ACK_STATUSES = tuple(DEFINITION["ack_statuses"])
# Why a worker declines an FL round (``round_declined``); ``paused`` comes from the session.
DECLINE_REASONS = tuple(_WORKER["inbound"]["round_declined"]["properties"]["reason"]["enum"])
MAX_DECLINE_MESSAGE = _WORKER["inbound"]["round_declined"]["properties"]["message"]["maxLength"]

# Server → worker message schemas, and the fields each must carry (beyond "v" and "type").
SERVER_SCHEMAS: dict[str, dict[str, Any]] = _WORKER["outbound"]
SERVER_MESSAGES: dict[str, tuple[str, ...]] = {
    kind: tuple(name for name in schema["required"] if name not in ("v", "type"))
    for kind, schema in SERVER_SCHEMAS.items()
}
# Each server message's schema compiled once: checking an ``assign`` by walking its schema cost
# the worker ~100 µs per message, more than six times decoding its JSON.
SERVER_CHECKS = {kind: compile_check(schema) for kind, schema in SERVER_SCHEMAS.items()}

_LENGTH_PREFIX = struct.Struct(">I")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_U64_RE = re.compile(r"^(0|[1-9][0-9]{0,19})$")


class ProtocolError(ValueError):
    """A server message is not valid protocol v1."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _message(kind: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": kind, **fields}


def hello(
    token: str,
    *,
    client_version: str,
    capabilities: Mapping[str, Any],
    slots: int,
    resume: str | None = None,
    kind: str = "edge",
    user_agent: str | None = None,
) -> dict[str, Any]:
    """Build the first message of a session."""
    client: dict[str, Any] = {"kind": kind, "version": client_version}
    agent = _CONTROL_CHARACTERS.sub("", user_agent or "")
    if agent:
        client["user_agent"] = agent[:300]
    return _message(
        "hello",
        token=token,
        client=client,
        capabilities=dict(capabilities),
        slots=slots,
        resume=resume,
    )


def capacity(slots: int) -> dict[str, Any]:
    """Build a ``capacity`` message (0 pauses the worker)."""
    if not 0 <= slots <= MAX_SLOTS:
        raise ValueError(f"slots must be in 0..{MAX_SLOTS}, got {slots}")
    return _message("capacity", slots=slots)


def progress(assignment: str, fraction: float | None = None) -> dict[str, Any]:
    """Build a ``progress`` heartbeat; ``fraction`` is optional and clamped to [0, 1]."""
    if fraction is None or not math.isfinite(fraction):
        return _message("progress", assignment=assignment)
    return _message("progress", assignment=assignment, fraction=min(1.0, max(0.0, fraction)))


def error(assignment: str, code: str, message: str = "") -> dict[str, Any]:
    """Build a task ``error`` report; ``code`` is one of ERROR_CODES."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    text = message.replace("\x00", "")[:MAX_ERROR_MESSAGE]
    return _message("error", assignment=assignment, code=code, message=text)


def round_declined(participation: int, reason: str, message: str = "") -> dict[str, Any]:
    """Build a ``round_declined``: this worker will not train the round it was invited to."""
    if reason not in DECLINE_REASONS:
        raise ValueError(f"unknown decline reason {reason!r}")
    text = _CONTROL_CHARACTERS.sub("", message)[:MAX_DECLINE_MESSAGE]
    return _message("round_declined", participation=participation, reason=reason, message=text)


def ping() -> dict[str, Any]:
    """Build an application-level ``ping``."""
    return _message("ping")


def secagg_advertise(participation: int, cipher_public: str, mask_public: str) -> dict[str, Any]:
    """Build a secure round's phase-0 message: two public keys, unpadded base64url."""
    return _message(
        "secagg_advertise",
        participation=participation,
        cipher_public=cipher_public,
        mask_public=mask_public,
    )


def secagg_share_keys(participation: int, ciphertexts: list[dict[str, Any]]) -> dict[str, Any]:
    """Build a secure round's phase-1 message: ``[{"client", "ciphertext"}]`` per neighbour."""
    return _message("secagg_share_keys", participation=participation, ciphertexts=ciphertexts)


def secagg_unmask_shares(participation: int, shares: list[dict[str, Any]]) -> dict[str, Any]:
    """Build a secure round's phase-3 message: ``[{"client", "share"}]`` per neighbour."""
    return _message("secagg_unmask_shares", participation=participation, shares=shares)


def encode_text(message: Mapping[str, Any]) -> str:
    """Serialise a control message as compact JSON (NaN and Infinity are refused)."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def encode_result_frame(assignment: str, output: bytes, elapsed_ms: int) -> bytes:
    """Build a binary result frame: u32 big-endian header length, JSON header, output bytes."""
    header = encode_text(
        {
            "v": PROTOCOL_VERSION,
            "type": "result",
            "assignment": assignment,
            "sha256": hashlib.sha256(output).hexdigest(),
            "elapsed_ms": min(MAX_ELAPSED_MS, max(0, int(elapsed_ms))),
        }
    ).encode("utf-8")
    if len(header) > MAX_RESULT_HEADER_BYTES:
        raise ValueError("result header exceeds its size limit")
    return _LENGTH_PREFIX.pack(len(header)) + header + bytes(output)


def decode_result_frame(frame: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a result frame into its header and output, checking the output's sha256."""
    if len(frame) < _LENGTH_PREFIX.size:
        raise ProtocolError("invalid_message", "frame shorter than its length prefix")
    (length,) = _LENGTH_PREFIX.unpack_from(frame)
    end = _LENGTH_PREFIX.size + length
    if not 2 <= length <= MAX_RESULT_HEADER_BYTES or end > len(frame):
        raise ProtocolError("invalid_message", "bad result header length")
    header = _loads(frame[_LENGTH_PREFIX.size : end].decode("utf-8"))
    if not isinstance(header, dict) or header.get("type") != "result":
        raise ProtocolError("invalid_message", "header is not a result message")
    output = bytes(frame[end:])
    if header.get("sha256") != hashlib.sha256(output).hexdigest():
        raise ProtocolError("invalid_message", "output does not match the header's sha256")
    return header, output


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


# One decoder for every message: ``json.loads`` with an option builds a decoder (and its
# scanner) per call, more than half of decoding an ``ack`` (3.2 against 1.5 µs here; the
# worker's CPU per replica: ``bench/bench_edge_cycle.py``).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _loads(text: str) -> Any:
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("invalid_message", f"not JSON: {exc}"[:200]) from exc


def parse_server_message(text: str | bytes) -> dict[str, Any]:
    """Decode a server text frame and check it against its schema in the protocol definition.

    Unknown fields are allowed (a server may add optional fields within a version)."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    if len(text) > MAX_JSON_BYTES:
        raise ProtocolError("too_large", f"text frames are limited to {MAX_JSON_BYTES} bytes")
    message = _loads(text)
    if not isinstance(message, dict):
        raise ProtocolError("invalid_message", "a message must be a JSON object")
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("protocol_version", f"expected protocol v{PROTOCOL_VERSION}")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in SERVER_SCHEMAS:
        raise ProtocolError("invalid_message", f"unknown message type {kind!r}")
    problem = SERVER_CHECKS[kind](message)
    if problem:
        raise ProtocolError("invalid_message", f"{kind}: {problem}"[:300])
    return message


@dataclass(frozen=True, slots=True)
class KernelRef:
    """The kernel an assignment runs, pinned by the sha256 of its module."""

    name: str
    version: str
    sha256: str
    url: str


@dataclass(frozen=True, slots=True)
class Assignment:
    """One replica of one task, as pushed by the server's ``assign`` message."""

    id: str
    kernel: KernelRef
    lo: int
    hi: int
    seed: int
    params: tuple[float, ...]
    lease_ms: int
    work_units: int
    job: str | None = None
    task: int | None = None

    def input_bytes(self) -> bytes:
        """The kernel ABI input bytes for this task."""
        return abi.encode_input(self.lo, self.hi, self.seed, self.params)


def _u64(value: Any, field: str) -> int:
    if isinstance(value, str) and _U64_RE.match(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ProtocolError("invalid_message", f"assign: {field} must be a u64 decimal string")
    if not 0 <= number <= abi.U64_MAX:
        raise ProtocolError("invalid_message", f"assign: {field} is out of the u64 range")
    return number


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError("invalid_message", f"assign: {field} must be a non-empty string")
    return value


def _params(value: Any) -> tuple[float, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ProtocolError("invalid_message", "assign: input.params must be a list")
    if len(value) > abi.MAX_PARAMS:
        raise ProtocolError("invalid_message", f"assign: more than {abi.MAX_PARAMS} params")
    params = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise ProtocolError("invalid_message", "assign: params must be numbers")
        number = float(item)
        if not math.isfinite(number):
            raise ProtocolError("invalid_message", "assign: params must be finite")
        params.append(number)
    return tuple(params)


def decode_assign(message: Mapping[str, Any]) -> Assignment:
    """Turn an ``assign`` message into an Assignment, checking every field it uses."""
    kernel = message.get("kernel")
    data = message.get("input")
    if not isinstance(kernel, Mapping) or not isinstance(data, Mapping):
        raise ProtocolError("invalid_message", "assign: kernel and input must be objects")
    sha256 = _text(kernel.get("sha256"), "kernel.sha256").lower()
    if not _SHA256_RE.match(sha256):
        raise ProtocolError("invalid_message", "assign: kernel.sha256 must be 64 hex digits")
    lo, hi = _u64(data.get("lo"), "input.lo"), _u64(data.get("hi"), "input.hi")
    if lo > hi:
        raise ProtocolError("invalid_message", "assign: input.lo is greater than input.hi")
    lease_ms = message.get("lease_ms")
    if isinstance(lease_ms, bool) or not isinstance(lease_ms, int) or lease_ms < 0:
        raise ProtocolError("invalid_message", "assign: lease_ms must be a non-negative integer")
    task = message.get("task")
    job = message.get("job")
    return Assignment(
        id=_text(message.get("assignment"), "assignment"),
        kernel=KernelRef(
            name=_text(kernel.get("name"), "kernel.name"),
            version=str(kernel.get("version", "")),
            sha256=sha256,
            url=_text(kernel.get("url"), "kernel.url"),
        ),
        lo=lo,
        hi=hi,
        seed=_u64(data.get("seed", "0"), "input.seed"),
        params=_params(data.get("params", [])),
        lease_ms=lease_ms,
        work_units=_u64(message.get("work_units", hi - lo), "work_units"),
        job=job if isinstance(job, str) else None,
        task=task if isinstance(task, int) and not isinstance(task, bool) else None,
    )
