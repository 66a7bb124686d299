"""Frames that used to crash the WebSocket routes, and small helpers shared by the tests."""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any

from tests.jobs.helpers import HELLO

NESTED = "[" * 10_000  # ~10 KB: under the text limit, far over any parser's recursion limit


def hello(token: str, kind: str = "edge", **overrides: Any) -> str:
    """A hello text frame for ``kind`` workers."""
    return json.dumps(
        {**HELLO, "token": token, "client": {"kind": kind, "version": "test"}, **overrides}
    )


def result_frame(header: dict[str, Any], output: bytes = b"") -> bytes:
    """A binary result frame with an arbitrary header."""
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + output


def worker_bad_frames(assignment: str) -> list[tuple[str, str | bytes, str]]:
    """(name, frame, expected error code) a worker route must answer after hello."""
    newline_id = assignment + "\n"
    sha = "0" * 64
    return [
        ("nested", NESTED, "invalid_message"),
        ("nested_object", '{"a":' * 2000 + "1" + "}" * 2000, "invalid_message"),
        (
            "progress_newline",
            json.dumps({"v": 1, "type": "progress", "assignment": newline_id}),
            "invalid_message",
        ),
        (
            "error_newline",
            json.dumps({"v": 1, "type": "error", "assignment": newline_id, "code": "internal"}),
            "invalid_message",
        ),
        (
            "result_newline",
            result_frame({"v": 1, "type": "result", "assignment": newline_id, "sha256": sha}),
            "invalid_message",
        ),
        (
            "result_sha_newline",
            result_frame(
                {"v": 1, "type": "result", "assignment": assignment, "sha256": sha + "\n"}
            ),
            "invalid_message",
        ),
        (
            "error_nul",
            json.dumps(
                {
                    "v": 1,
                    "type": "error",
                    "assignment": assignment,
                    "code": "internal",
                    "message": "a\x00b",
                }
            ),
            "invalid_message",
        ),
        ("result_nested", result_frame({"a": NESTED[:900]}), "invalid_message"),
        ("result_not_utf8", struct.pack(">I", 4) + b"\xff\xfe\xfd\xfc", "invalid_message"),
        ("binary_garbage", b"\x00", "invalid_message"),
        ("not_json", "{nope", "invalid_message"),
        ("ref_nested", '{"type": ' + "[" * 3000, "invalid_message"),
    ]


def hello_bad_frames(token: str, kind: str) -> list[tuple[str, str, str]]:
    """Hello frames that must be refused with invalid_message (before any hello)."""
    worker = str(uuid.uuid4())
    return [
        ("resume_newline", hello(token, kind, resume=worker + "\n"), "invalid_message"),
        (
            "resume_nested",
            hello(token, kind, resume=json.loads("[" * 50 + "]" * 50)),
            "invalid_message",
        ),
        (
            "version_nul",
            json.dumps(
                {**json.loads(hello(token, kind)), "client": {"kind": kind, "version": "\x00"}}
            ),
            "invalid_message",
        ),
    ]


DIRECTOR_BAD_FRAMES: list[tuple[str, str | bytes, str]] = [
    ("not_json", "not json at all", "invalid_message"),
    ("nested", NESTED, "invalid_message"),
    ("binary", b"\x00\x01binary", "invalid_message"),
    ("list", "[1, 2]", "invalid_message"),
    (
        "unknown_action",
        json.dumps({"v": 1, "type": "control", "action": "explode"}),
        "invalid_message",
    ),
    (
        "action_newline",
        json.dumps({"v": 1, "type": "control", "action": "pause\n"}),
        "invalid_message",
    ),
    (
        "wrong_version",
        json.dumps({"v": 2, "type": "control", "action": "pause"}),
        "protocol_version",
    ),
    ("not_control", json.dumps({"v": 1, "type": "hello"}), "invalid_message"),
]
