"""Valid examples of every message in the definition, and mutations of them, for the
checker-agreement and fuzz tests."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from hypothesis import strategies as st

A = str(uuid.UUID(int=3))
SHA = "ef" * 32

SAMPLES: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("worker", "inbound"): [
        {
            "v": 1,
            "type": "hello",
            "token": "t" * 30,
            "client": {"kind": "edge", "version": "1.0", "user_agent": "ua"},
            "capabilities": {"cores": 4, "memory_mb": 1024, "simd": True, "metered": False},
            "slots": 2,
            "resume": A,
        },
        {"v": 1, "type": "capacity", "slots": 3},
        {"v": 1, "type": "progress", "assignment": A, "fraction": 0.5},
        {"v": 1, "type": "error", "assignment": A, "code": "timeout", "message": "slow\nly"},
        {"v": 1, "type": "ping"},
        {"v": 1, "type": "round_declined", "participation": 3, "reason": "paused", "message": "u"},
        {"v": 1, "type": "result", "assignment": A, "sha256": SHA, "elapsed_ms": 5},
        {
            "v": 1,
            "type": "secagg_advertise",
            "participation": 4,
            "cipher_public": "a" * 43,
            "mask_public": "B-_" + "c" * 40,
        },
        {
            "v": 1,
            "type": "secagg_share_keys",
            "participation": 4,
            "ciphertexts": [{"client": 1, "ciphertext": "xyz_-0"}],
        },
        {
            "v": 1,
            "type": "secagg_unmask_shares",
            "participation": 4,
            "shares": [{"client": 2, "share": "s" * 44}],
        },
    ],
    ("worker", "outbound"): [
        {
            "v": 1,
            "type": "welcome",
            "worker": A,
            "contributor": A,
            "heartbeat_ms": 100,
            "limits": {"max_json_bytes": 1, "max_result_bytes": 2, "messages_per_second": 3},
            "outstanding": [A],
        },
        {
            "v": 1,
            "type": "assign",
            "assignment": A,
            "job": A,
            "task": 2,
            "kernel": {"name": "k", "version": "1", "sha256": SHA, "url": "/k.wasm"},
            "input": {"lo": "1", "hi": "18446744073709551615", "seed": "0", "params": [1.5]},
            "lease_ms": 10,
            "work_units": "12",
        },
        {"v": 1, "type": "ack", "assignment": A, "status": "late"},
        {"v": 1, "type": "credit", "validated": 1, "work_units": 9},
        {"v": 1, "type": "cancel", "assignment": A, "reason": "job_paused"},
        {"v": 1, "type": "error", "code": "invalid_message", "message": "m", "ref": None},
        {"v": 1, "type": "pong"},
        {
            "v": 1,
            "type": "round_invite",
            "job": A,
            "round": 2,
            "participation": 7,
            "seed": "12",
            "model": {
                "version": 1,
                "sha256": SHA,
                "url": "/w",
                "parameters": 650,
                "sizes": [64, 10],
            },
            "kernel": {"name": "logreg", "sha256": SHA, "url": "/k"},
            "hyperparameters": {
                "epochs": 1,
                "batch_size": 10,
                "learning_rate": 0.1,
                "momentum": 0.0,
                "proximal_mu": 0.0,
            },
            "data": {
                "source": "public_partition",
                "private": False,
                "dataset": "digits",
                "partition": "shards",
                "clients": 2,
                "client_index": 1,
                "seed": 3,
                "url": "/fl/shards/x/1.bin",
            },
            "upload": {"url": "/fl/uploads/", "chunk_bytes": 1024, "total_bytes": 2632},
            "deadline_ms": 5000,
        },
        {
            "v": 1,
            "type": "round_invite",
            "job": A,
            "round": 1,
            "participation": 8,
            "seed": "13",
            "kernel": {"name": "analytics", "sha256": SHA, "url": "/k"},
            "analytics": {
                "columns": [{"name": "px5", "feature": 5, "lo": 0.0, "hi": 1.0, "bins": 16}],
                "max_rows": 1000,
                "dimension": 19,
            },
            "data": {"source": "contributor_local", "private": True},
            "upload": {"url": "/fl/uploads/", "chunk_bytes": 1024, "total_bytes": 108},
            "deadline_ms": 5000,
        },
        {
            "v": 1,
            "type": "secagg_keys",
            "participation": 7,
            "round": 2,
            "keys": [{"client": 1, "cipher_public": "k" * 43, "mask_public": "m" * 43}],
            "deadline_ms": 10,
        },
        {
            "v": 1,
            "type": "secagg_ciphertexts",
            "participation": 7,
            "round": 2,
            "ciphertexts": [{"client": 1, "ciphertext": "abc"}],
            "deadline_ms": 10,
        },
        {
            "v": 1,
            "type": "secagg_unmask",
            "participation": 7,
            "round": 2,
            "alive": [1, 2],
            "dropped": [],
            "deadline_ms": 10,
        },
        {"v": 1, "type": "secagg_abort", "participation": 7, "round": 2, "reason": "below t"},
    ],
    ("director", "inbound"): [{"v": 1, "type": "control", "action": "pause"}],
    ("director", "outbound"): [
        {
            "v": 1,
            "type": "state",
            "state": {
                "job": A,
                "status": "running",
                "progress_percent": 50,
                "tasks": {},
                "replicas": {},
                "workers": [],
                "events": [],
            },
        },
        {"v": 1, "type": "event", "kind": "started", "message": "go", "at": "2026-01-01T00:00:00"},
        {"v": 1, "type": "error", "code": "refused", "message": "no"},
    ],
}

# Values a field may be replaced with: every JSON type and the edges the schemas care about.
REPLACEMENTS: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    2**64,
    65,
    "",
    "x",
    A + "\n",
    "\n" + A,
    A.upper(),
    SHA + "\n",
    "0123",
    "a\x00b",
    "é" * 41,
    [],
    [A],
    {},
    {"a": 1},
]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            paths += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += _paths(item, (*prefix, index))
    return paths


def _set(value: Any, path: tuple, new: Any) -> Any:
    copied = copy.deepcopy(value)
    node = copied
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return copied


def _drop(value: Any, path: tuple) -> Any:
    copied = copy.deepcopy(value)
    node = copied
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return copied


def every_mutation(message: dict[str, Any]) -> list[Any]:
    """Each single-field replacement and removal of ``message``, plus an unknown field."""
    out: list[Any] = [{**message, "extra": 1}]
    for path in _paths(message):
        out.extend(_set(message, path, new) for new in REPLACEMENTS)
        out.append(_drop(message, path))
    return out


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, message: dict[str, Any]) -> Any:
    """``message`` with one field replaced (by a listed edge value or any JSON), removed, or
    an unknown field added."""
    paths = _paths(message)
    action = draw(st.sampled_from(["edge", "any", "drop", "add"]))
    if action == "add" or not paths:
        return {**message, draw(st.text(max_size=10)): draw(json_values)}
    path = draw(st.sampled_from(paths))
    if action == "drop":
        return _drop(message, path)
    new = draw(st.sampled_from(REPLACEMENTS)) if action == "edge" else draw(json_values)
    return _set(message, path, new)
