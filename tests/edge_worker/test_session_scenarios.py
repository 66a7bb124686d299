"""The edge worker's session state machine against the shared scenario table.

tests/scenarios/worker_session.json is also run against the browser's session.js
(tests/js/session-scenarios.test.mjs): both clients must turn the same inputs into the same
effects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ccgsc_worker import protocol as proto
from ccgsc_worker.backoff import Backoff
from ccgsc_worker.outbox import Outbox
from ccgsc_worker.session import Session

TABLE = json.loads(
    (Path(__file__).resolve().parents[1] / "scenarios" / "worker_session.json").read_text()
)
CLIENT = "edge"
SCENARIOS = [s for s in TABLE["scenarios"] if CLIENT in s.get("clients", [CLIENT])]


def resolve(value: Any) -> Any:
    """Replace ``@NAME`` strings (values and keys) by the table's ids."""
    if isinstance(value, str) and value.startswith("@"):
        return TABLE["ids"][value[1:]]
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if isinstance(value, dict):
        return {resolve(k): resolve(v) for k, v in value.items()}
    return value


def matches(expected: Any, actual: Any, path: str = "") -> None:
    """Assert that ``actual`` has every key of ``expected`` with the same value."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key}: missing in {actual!r}"
            matches(value, actual[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: expected a list, got {actual!r}"
        assert len(actual) == len(expected), f"{path}: expected {expected!r}, got {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            matches(e, a, f"{path}[{i}]")
    else:
        assert type(actual) is type(expected), f"{path}: expected {expected!r}, got {actual!r}"
        assert actual == expected, f"{path}: expected {expected!r}, got {actual!r}"


def make_session(config: dict[str, Any]) -> Session:
    """A session configured like the table says."""
    jitter = config["jitter"]

    def build_hello(slots: int, resume: str | None) -> dict[str, Any]:
        return proto.hello(
            "t" * 40,
            client_version="1.0.0",
            capabilities={"cores": config["concurrency"], "simd": True},
            slots=slots,
            resume=resume,
        )

    return Session(
        concurrency=config["concurrency"],
        build_hello=build_hello,
        backoff=Backoff(rng=lambda: jitter),
        outbox=Outbox(limit=config.get("outbox_limit", 256)),
        worker_id=config["worker"],
        heartbeat_floor_ms=config["heartbeat_floor_ms"],
    )


def feed(session: Session, step_input: dict[str, Any]) -> list[dict[str, Any]]:
    """Turn a table input into the session's own input and apply it."""
    if "server" in step_input:
        kind = step_input["server"]
        fields = {k: v for k, v in step_input.items() if k != "server"}
        defaults = resolve(TABLE["server_defaults"].get(kind, {}))
        message = {"v": 1, "type": kind, **defaults, **fields}
        return session.message(json.dumps(message))
    event = dict(step_input)
    if event["event"] == "message":
        text = event.pop("text", None)
        event["data"] = bytes.fromhex(event.pop("binary_hex")) if text is None else text
    if event["event"] == "finished":
        event["output"] = bytes.fromhex(event.pop("output_hex"))
    return session.handle(event)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_scenario(scenario: dict[str, Any]) -> None:
    session = make_session(resolve({**TABLE["config"], **scenario.get("config", {})}))
    for number, raw in enumerate(scenario["steps"], 1):
        if CLIENT not in raw.get("clients", [CLIENT]):
            continue
        step = resolve(raw)
        where = f"step {number} {json.dumps(raw['input'])}"
        effects = feed(session, step["input"])
        actions = [e for e in effects if e["do"] != "notify"]
        notes = [{k: v for k, v in e.items() if k != "do"} for e in effects if e["do"] == "notify"]
        if "effects" in step:
            matches(step["effects"], actions, where + " effects")
        if "notify" in step:
            matches(step["notify"], notes, where + " notify")
        if "state" in step:
            matches(step["state"], session.snapshot(), where + " state")
        if "frame" in step:
            header, output = proto.decode_result_frame(
                session.outbox.get(step["frame"]["assignment"])
            )
            matches(step["frame"]["header"], header, where + " frame")
            assert output == bytes.fromhex(step["frame"]["output_hex"])


def test_every_input_kind_and_effect_kind_is_covered() -> None:
    inputs = {s["input"].get("event", "message") for sc in SCENARIOS for s in sc["steps"]}
    assert inputs >= {"start", "opened", "message", "closed", "finished", "failed", "tick"}
    assert inputs >= {"pause", "resume", "concurrency", "stop"}
    effects = {
        e["do"] for sc in TABLE["scenarios"] for s in sc["steps"] for e in s.get("effects", [])
    }
    assert effects == {
        "send",
        "send_result",
        "run",
        "cancel",
        "connect",
        "heartbeat",
        "close",
        "end",
        "train",
        "secagg",
    }


def test_the_table_is_well_formed() -> None:
    """A misspelt key would silently check nothing, so every key must be a known one."""
    names = [s["name"] for s in TABLE["scenarios"]]
    assert len(names) == len(set(names))
    for scenario in TABLE["scenarios"]:
        assert set(scenario) <= {"name", "config", "clients", "steps"}, scenario["name"]
        assert set(scenario.get("clients", [])) <= {"edge", "browser"}
        for step in scenario["steps"]:
            assert set(step) <= {"input", "effects", "notify", "state", "frame", "clients"}, step
            assert set(step.get("clients", [])) <= {"edge", "browser"}
    text = json.dumps(TABLE["scenarios"])
    for alias in set(re.findall(r'"@(\w+)"', text)):
        assert alias in TABLE["ids"], alias
