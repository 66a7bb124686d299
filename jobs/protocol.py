"""Worker protocol v1: message schemas and the binary result frame. Django-free.

The schemas here are the ones the consumers validate against; docs/protocol.md documents them.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

PROTOCOL_VERSION = 1
MAX_JSON_BYTES = 16 * 1024
MAX_RESULT_BYTES = 1024 * 1024
MAX_RESULT_HEADER_BYTES = 1024
MESSAGES_PER_SECOND = 50
MESSAGE_BURST = 100
HELLO_TIMEOUT_S = 10
MAX_SLOTS = 64

CLOSE_UNAUTHORIZED = 4001
CLOSE_PROTOCOL_VERSION = 4002
CLOSE_HELLO_TIMEOUT = 4003
CLOSE_RATE_LIMITED = 4008
CLOSE_TOO_LARGE = 4009

_UUID = {
    "type": "string",
    "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
}
_VERSION = {"const": PROTOCOL_VERSION}

SCHEMAS: dict[str, dict[str, Any]] = {
    "hello": {
        "type": "object",
        "required": ["v", "type", "token", "client", "capabilities", "slots"],
        "additionalProperties": False,
        "properties": {
            "v": _VERSION,
            "type": {"const": "hello"},
            "token": {"type": "string", "minLength": 10, "maxLength": 512},
            "client": {
                "type": "object",
                "required": ["kind", "version"],
                "additionalProperties": False,
                "properties": {
                    "kind": {"enum": ["browser", "edge"]},
                    "version": {"type": "string", "maxLength": 40},
                    "user_agent": {"type": "string", "maxLength": 300},
                },
            },
            "capabilities": {
                "type": "object",
                "required": ["cores"],
                "additionalProperties": False,
                "properties": {
                    "cores": {"type": "integer", "minimum": 1, "maximum": 1024},
                    "memory_mb": {"type": "integer", "minimum": 0, "maximum": 16_777_216},
                    "simd": {"type": "boolean"},
                    "battery_powered": {"type": "boolean"},
                    "metered": {"type": "boolean"},
                },
            },
            "slots": {"type": "integer", "minimum": 0, "maximum": MAX_SLOTS},
            "resume": {"anyOf": [_UUID, {"type": "null"}]},
        },
    },
    "capacity": {
        "type": "object",
        "required": ["v", "type", "slots"],
        "additionalProperties": False,
        "properties": {
            "v": _VERSION,
            "type": {"const": "capacity"},
            "slots": {"type": "integer", "minimum": 0, "maximum": MAX_SLOTS},
        },
    },
    "progress": {
        "type": "object",
        "required": ["v", "type", "assignment"],
        "additionalProperties": False,
        "properties": {
            "v": _VERSION,
            "type": {"const": "progress"},
            "assignment": _UUID,
            "fraction": {"type": "number", "minimum": 0, "maximum": 1},
        },
    },
    "error": {
        "type": "object",
        "required": ["v", "type", "assignment", "code"],
        "additionalProperties": False,
        "properties": {
            "v": _VERSION,
            "type": {"const": "error"},
            "assignment": _UUID,
            "code": {
                "enum": ["kernel_failed", "kernel_rejected", "hash_mismatch", "timeout", "internal"]
            },
            "message": {"type": "string", "maxLength": 500},
        },
    },
    "ping": {
        "type": "object",
        "required": ["v", "type"],
        "additionalProperties": False,
        "properties": {"v": _VERSION, "type": {"const": "ping"}},
    },
    "result": {
        "type": "object",
        "required": ["v", "type", "assignment", "sha256"],
        "additionalProperties": False,
        "properties": {
            "v": _VERSION,
            "type": {"const": "result"},
            "assignment": _UUID,
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "elapsed_ms": {"type": "integer", "minimum": 0, "maximum": 86_400_000},
        },
    },
}

_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in SCHEMAS.items()}
_TYPE_RE = re.compile(r"^[a-z_]{1,20}$")
_RESULT_PREFIX = struct.Struct(">I")


class ProtocolError(ValueError):
    """An inbound message is not valid protocol; ``code`` goes back to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def validate(message: object, *, binary: bool = False) -> dict[str, Any]:
    """Check a decoded message against its type's schema; return it or raise ProtocolError."""
    if not isinstance(message, dict):
        raise ProtocolError("invalid_message", "a message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or not _TYPE_RE.match(kind):
        raise ProtocolError("invalid_message", "missing or malformed 'type'")
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("protocol_version", f"this server speaks protocol v{PROTOCOL_VERSION}")
    if (kind == "result") != binary or kind not in _VALIDATORS:
        expected = "binary frame" if kind == "result" else "text frame"
        if kind not in _VALIDATORS:
            raise ProtocolError("invalid_message", f"unknown message type {kind!r}")
        raise ProtocolError("invalid_message", f"'{kind}' must be sent as a {expected}")
    errors = sorted(_VALIDATORS[kind].iter_errors(message), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or kind
        raise ProtocolError("invalid_message", f"{where}: {first.message}"[:300])
    return message


def parse_text(text: str) -> dict[str, Any]:
    """Decode and validate a text frame."""
    if len(text) > MAX_JSON_BYTES:
        raise ProtocolError("too_large", f"text frames are limited to {MAX_JSON_BYTES} bytes")
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ProtocolError("invalid_message", f"not JSON: {exc}"[:200]) from exc
    return validate(message)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


@dataclass(frozen=True, slots=True)
class ResultFrame:
    header: dict[str, Any]
    output: bytes


def parse_result_frame(data: bytes) -> ResultFrame:
    """Split a binary result frame: u32 big-endian header length, JSON header, output bytes."""
    if len(data) > MAX_RESULT_BYTES + MAX_RESULT_HEADER_BYTES + 4:
        raise ProtocolError("too_large", f"result outputs are limited to {MAX_RESULT_BYTES} bytes")
    if len(data) < 4:
        raise ProtocolError("invalid_message", "binary frame shorter than its length prefix")
    (header_len,) = _RESULT_PREFIX.unpack_from(data)
    if not 2 <= header_len <= MAX_RESULT_HEADER_BYTES or 4 + header_len > len(data):
        raise ProtocolError("invalid_message", "bad result header length")
    try:
        header = json.loads(
            data[4 : 4 + header_len].decode("utf-8"), parse_constant=_reject_constant
        )
    except ValueError as exc:
        raise ProtocolError("invalid_message", "result header is not JSON") from exc
    validate(header, binary=True)
    return ResultFrame(header=header, output=bytes(data[4 + header_len :]))
