"""Wire protocol v1, server side: validate what comes in, build what goes out. Django-free.

Everything here derives from the one definition, ``ccgsc_worker/protocol_v1.json`` (shared with
the edge worker and, through a generated module, the browser); docs/protocol.md documents it.
Inbound messages are judged by the small schema checker the clients use (about 7 µs, against
about 50 µs for the full JSON Schema validator; tests hold the two to the same verdict on every
single-field mutation of every message and on random ones), and a refusal is explained by the
full validator's message. Outbound messages are built
only by the functions below; with outbound checks on (tests, ``CCGSC_PROTOCOL_CHECK_OUTBOUND=1``)
each is validated against its schema too. They are off by default: the builders' own types keep
them right, and the hot path (assign, ack) then pays nothing.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

from ccgsc_worker.protocol_schema import compile_check, ecma_pattern, load_definition

DEFINITION = load_definition(1)
LIMITS: dict[str, int] = DEFINITION["limits"]
ROUTES: dict[str, dict[str, Any]] = DEFINITION["routes"]
CLOSE_CODES: dict[int, dict[str, Any]] = {
    int(code): info for code, info in DEFINITION["close_codes"].items()
}
_CLOSE = {info["name"]: code for code, info in CLOSE_CODES.items()}

PROTOCOL_VERSION: int = DEFINITION["version"]
MAX_JSON_BYTES = LIMITS["max_json_bytes"]
MAX_JSON_DEPTH = LIMITS["max_json_depth"]
MAX_RESULT_BYTES = LIMITS["max_result_bytes"]
MAX_RESULT_HEADER_BYTES = LIMITS["max_result_header_bytes"]
MAX_RESULT_FRAME_BYTES = 4 + MAX_RESULT_HEADER_BYTES + MAX_RESULT_BYTES
MESSAGES_PER_SECOND = LIMITS["messages_per_second"]
MESSAGE_BURST = LIMITS["message_burst"]
MAX_RATE_VIOLATIONS = LIMITS["max_rate_violations"]
HELLO_TIMEOUT_S = LIMITS["hello_timeout_s"]
MAX_SLOTS = LIMITS["max_slots"]
DIRECTOR_CONTROLS_PER_SECOND = LIMITS["director_controls_per_second"]
DIRECTOR_CONTROL_BURST = LIMITS["director_control_burst"]
DIRECTOR_MAX_RATE_VIOLATIONS = LIMITS["director_max_rate_violations"]
# Daphne must be started with this as --websocket-max-message-size (and frame size): frames
# above it are dropped by the server with no close code, so it sits above every frame the
# protocol answers.
WEBSOCKET_MAX_MESSAGE_BYTES = LIMITS["websocket_max_message_bytes"]

CLOSE_INTERNAL_ERROR = _CLOSE["internal_error"]
CLOSE_UNAUTHORIZED = _CLOSE["unauthorized"]
CLOSE_PROTOCOL_VERSION = _CLOSE["protocol_version"]
CLOSE_HELLO_TIMEOUT = _CLOSE["hello_timeout"]
CLOSE_NOT_FOUND = _CLOSE["not_found"]
CLOSE_RATE_LIMITED = _CLOSE["rate_limited"]
CLOSE_TOO_LARGE = _CLOSE["too_large"]

SERVER_ERROR_CODES = frozenset(DEFINITION["error_codes"]["server"])
TASK_ERROR_CODES = frozenset(DEFINITION["error_codes"]["task"])
ACK_STATUSES = frozenset(DEFINITION["ack_statuses"])

# The worker route's inbound schemas (kept under their historical name).
SCHEMAS: dict[str, dict[str, Any]] = ROUTES["worker"]["inbound"]


def _ecma_pattern_keyword(validator, pattern, instance, schema):  # noqa: ANN001, ANN202, ARG001
    if validator.is_type(instance, "string") and not ecma_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# JSON Schema patterns are ECMA-262 regular expressions: a final "$" never matches before a
# trailing newline (Python's does, which let "<uuid>\n" through to the database).
_Validator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern_keyword})


def _validators(direction: str) -> dict[str, dict[str, Any]]:
    return {
        route: {kind: _Validator(schema) for kind, schema in spec[direction].items()}
        for route, spec in ROUTES.items()
    }


_INBOUND = _validators("inbound")
# The small checker, compiled once per inbound message type: the fast path of ``validate``.
_INBOUND_CHECKS = {
    route: {kind: compile_check(schema) for kind, schema in spec["inbound"].items()}
    for route, spec in ROUTES.items()
}
_OUTBOUND = _validators("outbound")
_TYPE_RE = ecma_pattern(DEFINITION["type_name_pattern"])
_RESULT_PREFIX = struct.Struct(">I")

_check_outbound = os.environ.get("CCGSC_PROTOCOL_CHECK_OUTBOUND") == "1"


def set_outbound_checks(enabled: bool) -> None:
    """Validate every built outbound message against its schema (tests turn this on)."""
    global _check_outbound  # noqa: PLW0603 - one process-wide switch, read on every build
    _check_outbound = enabled


class ProtocolError(ValueError):
    """An inbound message is not valid protocol; ``code`` goes back to the client."""

    def __init__(self, code: str, message: str, *, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


class OutboundMessageError(AssertionError):
    """The server built a message its own schema refuses (a bug; raised only when checking)."""


# ---------------------------------------------------------------- inbound


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def decode_json(text: str | bytes) -> Any:
    """Parse one JSON document from a frame: no NaN/Infinity, nesting at most MAX_JSON_DEPTH."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        # RecursionError: thousands of "[" exhaust the parser's stack before it finds an error.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ProtocolError("invalid_message", f"not JSON: {reason}"[:200]) from exc
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise ProtocolError("invalid_message", f"JSON nested deeper than {MAX_JSON_DEPTH}")
    return value


def validate(message: object, *, binary: bool = False, route: str = "worker") -> dict[str, Any]:
    """Check a decoded message against its type's schema; return it or raise ProtocolError."""
    if not isinstance(message, dict):
        raise ProtocolError("invalid_message", "a message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or not _TYPE_RE.search(kind):
        raise ProtocolError("invalid_message", "missing or malformed 'type'")
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            "protocol_version", f"this server speaks protocol v{PROTOCOL_VERSION}", ref=kind
        )
    known = _INBOUND[route]
    if kind not in known:
        raise ProtocolError("invalid_message", f"unknown message type {kind!r}", ref=kind)
    binary_kind = ROUTES[route]["binary_inbound"]
    if (kind == binary_kind) != binary:
        expected = "binary frame" if kind == binary_kind else "text frame"
        raise ProtocolError("invalid_message", f"'{kind}' must be sent as a {expected}", ref=kind)
    problem = _INBOUND_CHECKS[route][kind](message)
    if problem is None:
        # The compiled small checker is the fast path (~6 µs for a result header against
        # ~130 µs for the full validator); the tests hold it to the full validator's verdict on
        # thousands of mutated messages.
        return message
    errors = sorted(known[kind].iter_errors(message), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or kind
        problem = f"{where}: {first.message}"
    raise ProtocolError("invalid_message", problem[:300], ref=kind)


def parse_text(text: str, *, route: str = "worker") -> dict[str, Any]:
    """Decode and validate a text frame."""
    if len(text) > MAX_JSON_BYTES:
        raise ProtocolError("too_large", f"text frames are limited to {MAX_JSON_BYTES} bytes")
    return validate(decode_json(text), route=route)


@dataclass(frozen=True, slots=True)
class ResultFrame:
    header: dict[str, Any]
    output: bytes


def parse_result_frame(data: bytes) -> ResultFrame:
    """Split a binary result frame: u32 big-endian header length, JSON header, output bytes."""
    if len(data) > MAX_RESULT_FRAME_BYTES:
        raise ProtocolError("too_large", f"result outputs are limited to {MAX_RESULT_BYTES} bytes")
    if len(data) < 4:
        raise ProtocolError("invalid_message", "binary frame shorter than its length prefix")
    (header_len,) = _RESULT_PREFIX.unpack_from(data)
    if not 2 <= header_len <= MAX_RESULT_HEADER_BYTES or 4 + header_len > len(data):
        raise ProtocolError("invalid_message", "bad result header length")
    try:
        header_text = bytes(data[4 : 4 + header_len]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("invalid_message", "result header is not UTF-8") from exc
    header = validate(decode_json(header_text), binary=True)
    return ResultFrame(header=header, output=bytes(data[4 + header_len :]))


def type_of(text: str | None) -> str | None:
    """The ``type`` of a text frame when it is cheap and safe to tell (for error refs)."""
    if not text or len(text) > MAX_JSON_BYTES:
        return None
    try:
        kind = decode_json(text).get("type")
    except (ProtocolError, AttributeError):
        return None
    return kind if isinstance(kind, str) and _TYPE_RE.search(kind) else None


# ---------------------------------------------------------------- outbound


def _build(route: str, message_type: str, /, **fields: Any) -> dict[str, Any]:
    message = {"v": PROTOCOL_VERSION, "type": message_type, **fields}
    if _check_outbound:
        _check(route, message_type, message)
    return message


def _check(route: str, message_type: str, message: dict[str, Any]) -> None:
    errors = list(_OUTBOUND[route][message_type].iter_errors(message))
    if errors:
        raise OutboundMessageError(f"{route}/{message_type}: {errors[0].message}: {message!r}")


def encode(message: dict[str, Any]) -> str:
    """Serialise an outbound message as compact JSON."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def welcome(
    *, worker: Any, contributor: Any, heartbeat_ms: int, outstanding: list[str]
) -> dict[str, Any]:
    """The answer to a valid ``hello``: identity, heartbeat, limits, work still expected."""
    return _build(
        "worker",
        "welcome",
        worker=str(worker),
        contributor=str(contributor),
        heartbeat_ms=heartbeat_ms,
        limits={
            "max_json_bytes": MAX_JSON_BYTES,
            "max_result_bytes": MAX_RESULT_BYTES,
            "messages_per_second": MESSAGES_PER_SECOND,
        },
        outstanding=[str(a) for a in outstanding],
    )


def assign_text(
    *,
    assignment: uuid.UUID,
    job: uuid.UUID,
    task: int,
    kernel_name: str,
    kernel_version: str,
    kernel_sha256: str,
    lo: int,
    hi: int,
    seed: int,
    params: list[float],
    lease_ms: int,
    work_units: int,
) -> str:
    """One replica pushed to a worker, encoded as ``encode`` would; u64 values travel as
    decimal strings.

    The job's fields (kernel, seed, params, lease) are encoded once per job and reused: a job
    start sends hundreds of ``assign``s of one job per flush from the event loop, and building
    and encoding each whole message cost about five times what filling in its task's fields
    does."""
    if type(assignment) is not uuid.UUID:  # only a UUID's text is safe to splice in as is
        assignment = uuid.UUID(str(assignment))
    job_text, kernel_text, input_text = _assign_job_text(
        job, kernel_name, kernel_version, kernel_sha256, seed, tuple(params), lease_ms
    )
    text = (
        f'{{"v":{PROTOCOL_VERSION},"type":"assign","assignment":"{assignment}",{job_text}'
        f'"task":{int(task)},{kernel_text}"input":{{"lo":"{int(lo)}","hi":"{int(hi)}",'
        f'{input_text}"work_units":{int(work_units)}}}'
    )
    if _check_outbound:
        _check("worker", "assign", json.loads(text))
    return text


@functools.lru_cache(maxsize=64)
def _assign_job_text(
    job: uuid.UUID,
    kernel_name: str,
    kernel_version: str,
    kernel_sha256: str,
    seed: int,
    params: tuple[float, ...],
    lease_ms: int,
) -> tuple[str, str, str]:
    """An ``assign``'s job fields as text: before the task, before the input, and the input's
    seed and params through ``lease_ms`` (keys in the order ``encode`` of the message gives).
    The params come as a tuple, the cache's key: encoding them for the key cost a ``json.dumps``
    (a new encoder) per ``assign``, as much as the rest of the message."""
    params_text = encode(list(params))
    kernel = encode(
        {
            "name": kernel_name,
            "version": kernel_version,
            "sha256": kernel_sha256,
            "url": f"/kernels/{kernel_sha256}.wasm",
        }
    )
    return (
        f'"job":"{uuid.UUID(str(job))}",',
        f'"kernel":{kernel},',
        f'"seed":"{int(seed)}","params":{params_text}}},"lease_ms":{int(lease_ms)},',
    )


def ack(*, assignment: Any, status: str) -> dict[str, Any]:
    """A result was handled: ``status`` is one of ACK_STATUSES."""
    return _build("worker", "ack", assignment=str(assignment), status=status)


def credit(*, validated: int, work_units: int) -> dict[str, Any]:
    """Replicas of this worker that just validated."""
    return _build("worker", "credit", validated=validated, work_units=work_units)


def cancel(*, assignment: Any, reason: str) -> dict[str, Any]:
    """Stop working on an assignment."""
    return _build("worker", "cancel", assignment=str(assignment), reason=reason)


def pong() -> dict[str, Any]:
    """The answer to ``ping``."""
    return _build("worker", "pong")


def error(*, code: str, message: str, ref: str | None = None) -> dict[str, Any]:
    """An error for a worker; ``ref`` names the type of the message it answers, when known."""
    return _build("worker", "error", code=code, message=message[:1000], ref=ref)


def round_invite(*, event: dict[str, Any], kernel_sha256: str, deadline_ms: int) -> dict[str, Any]:
    """An FL round invitation, from the ``worker.round_invite`` event the round service sent.

    ``kernel_sha256`` pins the training kernel's module; ``deadline_ms`` is the time left when
    sent (clocks of worker and server need not agree)."""
    data = dict(event["data"])
    if data.get("client_index") is not None:
        data["url"] = f"/fl/shards/{event['job']}/{data['client_index']}.bin"
    common = {
        "job": str(event["job"]),
        "round": event["round"],
        "participation": event["participation"],
        "seed": str(event["seed"]),
        "data": {key: value for key, value in data.items() if value is not None},
        "upload": dict(event["upload"]),
        "deadline_ms": max(0, deadline_ms),
    } | ({"secagg": dict(event["secagg"])} if event.get("secagg") else {})
    if "analytics" in event:  # an analytics round: the query instead of model and training
        query = event["analytics"]
        return _build(
            "worker",
            "round_invite",
            **common,
            kernel=_invite_kernel(query["kernel"], kernel_sha256),
            analytics={
                "columns": [dict(column) for column in query["columns"]],
                "max_rows": query["max_rows"],
                "dimension": query["dimension"],
            },
        )
    model, hyper = event["model"], event["hyperparameters"]
    return _build(
        "worker",
        "round_invite",
        **common,
        model={
            "version": model["version"],
            "sha256": model["sha256"],
            "url": model["url"],
            "parameters": model["parameter_count"],
            "sizes": list(model["sizes"]),
        }
        | {name: dict(model[name]) for name in ("control", "client_control") if name in model},
        kernel=_invite_kernel(model["kernel"], kernel_sha256),
        hyperparameters={
            "epochs": hyper["local_epochs"],
            "batch_size": hyper["batch_size"],
            "learning_rate": hyper["learning_rate"],
            "momentum": hyper["momentum"],
            "proximal_mu": hyper["proximal_mu"],
        }
        | ({"dp": {"clip_norm": hyper["dp"]["clip_norm"]}} if hyper.get("dp") else {})
        | ({"compression": dict(event["compression"])} if event.get("compression") else {}),
    )


def _invite_kernel(name: str, sha256: str) -> dict[str, str]:
    return {"name": name, "sha256": sha256, "url": f"/fl/kernels/{sha256}.wasm"}


SECAGG_OUTBOUND = frozenset({"secagg_keys", "secagg_ciphertexts", "secagg_unmask", "secagg_abort"})


def secagg(*, kind: str, fields: dict[str, Any], deadline_ms: int | None) -> dict[str, Any]:
    """A secure-aggregation phase message (one of SECAGG_OUTBOUND) from the ``worker.secagg``
    event the phase service sent; ``deadline_ms`` is the time left in the phase when sent."""
    if kind not in SECAGG_OUTBOUND:
        raise OutboundMessageError(f"not a secure-aggregation message: {kind!r}")
    extra = {} if deadline_ms is None else {"deadline_ms": max(0, deadline_ms)}
    return _build("worker", kind, **fields, **extra)


def director_state(*, state: dict[str, Any]) -> dict[str, Any]:
    """A director snapshot (``selectors.job_state``)."""
    return _build("director", "state", state=state)


def director_event(*, kind: str, message: str, at: str) -> dict[str, Any]:
    """A job event (started, paused, completed...)."""
    return _build("director", "event", kind=kind, message=message, at=at)


def director_error(*, code: str, message: str) -> dict[str, Any]:
    """An error for a director viewer."""
    return _build("director", "error", code=code, message=message[:1000])
