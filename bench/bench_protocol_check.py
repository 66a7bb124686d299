#!/usr/bin/env python3
"""Checking one protocol message against its schema: our compiled checker against
``jsonschema`` and ``jsonschema-rs``.

Every frame a worker receives is checked before it is used (``ccgsc_worker.protocol
.parse_server_message``), and every frame the server receives is checked before a service sees
it (``jobs.protocol.validate``). Both use the protocol package's small checker, compiled once
per message type (``protocol_schema.compile_check``). Measured here per message, for the
messages that travel most (each worker's ``assign``, ``ack`` and ``credit``; the server's
``result`` header, ``progress`` and ``hello``), with valid messages as they travel:

- **compiled**: ``compile_check(schema)(message)``, what both sides run;
- **jsonschema**: the server's full validator (Draft 2020-12 with ECMA patterns), the one that
  words the error when the compiled checker refuses a message;
- **jsonschema-rs**: the Rust validator's ``is_valid`` (a native wheel; not something the
  dependency-free worker package can carry);
- **json.loads**: decoding the same message's text, for scale.

Usage: python bench/bench_protocol_check.py [--quick]. Writes bench/results/protocol_check.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "edge_worker"))

import jsonschema_rs  # noqa: E402 - after the path setup

from ccgsc_worker.protocol_schema import compile_check, load_definition  # noqa: E402
from jobs import protocol as server  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "protocol_check.json"
ID = str(uuid.UUID(int=0x1234_5678_9ABC_DEF0_1234_5678_9ABC_DEF0))

MESSAGES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "outbound",
        "assign",
        {
            "v": 1,
            "type": "assign",
            "assignment": ID,
            "job": ID,
            "task": 17,
            "kernel": {
                "name": "montecarlo_pi",
                "version": "1.0.0",
                "sha256": "ab" * 32,
                "url": "/static/wasm/montecarlo_pi-1.0.0.wasm",
            },
            "input": {"lo": "0", "hi": "100000", "seed": "42", "params": []},
            "lease_ms": 60000,
            "work_units": 100000,
        },
    ),
    ("outbound", "ack", {"v": 1, "type": "ack", "assignment": ID, "status": "accepted"}),
    ("outbound", "credit", {"v": 1, "type": "credit", "validated": 1, "work_units": 100000}),
    (
        "inbound",
        "result",
        {"v": 1, "type": "result", "assignment": ID, "sha256": "cd" * 32, "elapsed_ms": 1003},
    ),
    ("inbound", "progress", {"v": 1, "type": "progress", "assignment": ID, "fraction": 0.5}),
    (
        "inbound",
        "hello",
        {
            "v": 1,
            "type": "hello",
            "token": "wk_" + "x" * 40,
            "client": {"kind": "edge", "version": "1.0.0"},
            "capabilities": {"cores": 4, "memory_mb": 8192, "simd": True},
            "slots": 2,
            "resume": ID,
        },
    ),
]


def per_call_us(call: Callable[[], Any], seconds: float) -> float:
    """Median over five runs of the mean cost of one call, in microseconds."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            call()
        if time.perf_counter() - start > seconds / 10:
            break
        number *= 2
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(number):
            call()
        runs.append((time.perf_counter() - start) / number * 1e6)
    return sorted(runs)[2]


def measure(seconds: float) -> list[dict[str, Any]]:
    worker = load_definition()["routes"]["worker"]
    rows = []
    for direction, kind, message in MESSAGES:
        schema = worker[direction][kind]
        compiled = compile_check(schema)
        full = server._Validator(schema)  # noqa: SLF001 - the exact validator the server uses
        rust = jsonschema_rs.validator_for(schema)
        text = json.dumps(message)
        verdicts = {
            "compiled": compiled(message) is None,
            "jsonschema": full.is_valid(message),
            "jsonschema-rs": rust.is_valid(message),
        }
        if not all(verdicts.values()):
            raise SystemExit(f"{kind}: a checker refused the sample: {verdicts}")
        timings = {
            "compiled": per_call_us(lambda c=compiled, m=message: c(m), seconds),
            "jsonschema": per_call_us(lambda v=full, m=message: v.is_valid(m), seconds),
            "jsonschema-rs": per_call_us(lambda v=rust, m=message: v.is_valid(m), seconds),
            "json.loads": per_call_us(lambda t=text: json.loads(t), seconds),
        }
        rows.append(
            {
                "message": kind,
                "checked by": "worker" if direction == "outbound" else "server",
                "bytes": len(text),
                "us": {name: round(value, 2) for name, value in timings.items()},
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| message | checked by | bytes | compiled µs | jsonschema µs | "
        "jsonschema-rs µs | json.loads µs | jsonschema ÷ compiled | jsonschema-rs ÷ compiled |"
    )
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        us = row["us"]
        lines.append(
            f"| `{row['message']}` | {row['checked by']} | {row['bytes']} | {us['compiled']:.1f} "
            f"| {us['jsonschema']:.1f} | {us['jsonschema-rs']:.1f} "
            f"| {us['json.loads']:.1f} | {us['jsonschema'] / us['compiled']:.1f}× "
            f"| {us['jsonschema-rs'] / us['compiled']:.2f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    args = parser.parse_args(argv)
    rows = measure(0.2 if args.quick else 1.0)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows}, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
