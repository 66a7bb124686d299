"""The protocol definition itself: well-formed, self-consistent, inside what the small
checkers understand, and read the same way by the server, the edge worker and the browser."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from ccgsc_worker import protocol as edge
from ccgsc_worker.protocol_schema import (
    DEFINITION_DIR,
    SUPPORTED_KEYWORDS,
    check,
    ecma_pattern,
    load_definition,
)
from jobs import protocol as server
from tests.protocol.samples import SAMPLES, every_mutation, mutated
from tests.protocol.test_cross_clients import _node

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = load_definition(1)
ROUTES = DEFINITION["routes"]
MESSAGE_SCHEMAS = [
    (route, direction, kind, schema)
    for route, spec in ROUTES.items()
    for direction in ("inbound", "outbound")
    for kind, schema in spec[direction].items()
]


def _walk(schema: dict[str, Any]):  # noqa: ANN202
    """Every schema node below ``schema`` (property maps are not schemas themselves)."""
    yield schema
    for name in ("items", "additionalProperties"):
        if isinstance(schema.get(name), dict):
            yield from _walk(schema[name])
    for child in schema.get("properties", {}).values():
        yield from _walk(child)
    for child in schema.get("anyOf", []):
        yield from _walk(child)


def test_the_file_is_valid_json_schema_and_declares_its_version():
    raw = json.loads((DEFINITION_DIR / "protocol_v1.json").read_text())
    assert raw["version"] == 1
    assert raw["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for _route, _direction, _kind, schema in MESSAGE_SCHEMAS:
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(("route", "direction", "kind", "schema"), MESSAGE_SCHEMAS)
def test_each_message_schema_is_inside_the_checkers_subset(route, direction, kind, schema):
    assert ecma_pattern(DEFINITION["type_name_pattern"]).search(kind)
    assert schema["properties"]["type"] == {"const": kind}
    assert schema["properties"]["v"] == {"const": DEFINITION["version"]}
    assert {"v", "type"} <= set(schema["required"])
    if direction == "inbound":
        assert schema["additionalProperties"] is False  # the server is strict
    for node in _walk(schema):
        assert set(node) <= SUPPORTED_KEYWORDS, set(node) - SUPPORTED_KEYWORDS
        pattern = node.get("pattern")
        if pattern is not None and pattern != "^/":
            # anchored at both ends, and "$" only at the end
            assert pattern.startswith("^"), pattern
            assert pattern.endswith("$"), pattern
            assert "$" not in pattern[:-1], pattern


def _schema_at(route: str, direction: str, kind: str, *path: str) -> dict[str, Any]:
    node = ROUTES[route][direction][kind]
    for name in path:
        node = node["properties"][name]
    return node


def test_limits_inside_schemas_agree_with_the_limits_table():
    limits = DEFINITION["limits"]
    assert _schema_at("worker", "inbound", "hello", "slots")["maximum"] == limits["max_slots"]
    assert _schema_at("worker", "inbound", "capacity", "slots")["maximum"] == limits["max_slots"]
    assert (
        _schema_at("worker", "inbound", "error", "message")["maxLength"]
        == limits["max_error_message_chars"]
    )
    assert (
        _schema_at("worker", "inbound", "result", "elapsed_ms")["maximum"]
        == limits["max_elapsed_ms"]
    )
    assert (
        _schema_at("worker", "outbound", "assign", "input")["properties"]["params"]["maxItems"]
        == limits["max_params"]
    )
    assert _schema_at("worker", "inbound", "error", "code")["enum"] == list(
        DEFINITION["error_codes"]["task"]
    )
    assert _schema_at("worker", "outbound", "ack", "status")["enum"] == list(
        DEFINITION["ack_statuses"]
    )
    # the WebSocket server's cap sits above every frame the protocol answers
    largest = 4 + limits["max_result_header_bytes"] + limits["max_result_bytes"]
    assert limits["websocket_max_message_bytes"] > max(largest, limits["max_json_bytes"])
    assert set(DEFINITION["limit_notes"]) == set(limits)


def test_close_codes_are_documented_private_codes_with_unique_names():
    codes = DEFINITION["close_codes"]
    names = [info["name"] for info in codes.values()]
    assert len(names) == len(set(names))
    for code, info in codes.items():
        # a WebSocket server may send only 1000 or 3000-4999 (Daphne refuses 1011 from the app)
        assert 4000 <= int(code) <= 4999
        assert isinstance(info["reconnect"], bool)
        assert info["meaning"]
        assert set(info["routes"]) <= set(ROUTES)


def test_server_and_edge_constants_come_from_the_definition():
    limits = DEFINITION["limits"]
    assert server.MAX_JSON_BYTES == edge.MAX_JSON_BYTES == limits["max_json_bytes"]
    assert server.MAX_RESULT_BYTES == edge.MAX_RESULT_BYTES == limits["max_result_bytes"]
    assert server.MAX_SLOTS == edge.MAX_SLOTS == limits["max_slots"]
    assert server.CLOSE_TOO_LARGE == edge.CLOSE_TOO_LARGE == 4009
    assert server.CLOSE_UNAUTHORIZED == edge.CLOSE_UNAUTHORIZED == 4001
    fatal, task_codes = edge.FATAL_CLOSE_CODES, edge.ERROR_CODES
    assert fatal == {4001, 4002}
    assert task_codes == tuple(DEFINITION["error_codes"]["task"])
    assert set(edge.ACK_STATUSES) == server.ACK_STATUSES
    assert edge.SERVER_MESSAGES["ack"] == ("assignment", "status")
    assert edge.EDGE_PATH == "/ws/edge/"


def test_a_later_version_extends_v1_in_one_file(tmp_path: Path):
    """How v2 (federated learning) is added: one file that names what it adds or changes."""
    shutil.copy(DEFINITION_DIR / "protocol_v1.json", tmp_path / "protocol_v1.json")
    invite = {
        "type": "object",
        "required": ["v", "type", "round"],
        "properties": {
            "v": {"const": 2},
            "type": {"const": "round_invite"},
            "round": {"$ref": "#/$defs/uuid"},
        },
    }
    v2 = {
        "extends": 1,
        "version": 2,
        "$defs": {"version": {"const": 2}},
        "limits": {"max_update_chunk_bytes": 1048576},
        "routes": {"worker": {"outbound": {"round_invite": invite}}},
    }
    (tmp_path / "protocol_v2.json").write_text(json.dumps(v2))
    definition = load_definition(2, tmp_path)
    worker = definition["routes"]["worker"]
    assert worker["outbound"]["round_invite"]["properties"]["round"]["minLength"] == 36
    assert worker["outbound"]["ack"]["properties"]["v"] == {"const": 2}  # v1 messages, now v2
    assert definition["limits"]["max_slots"] == 64
    assert definition["limits"]["max_update_chunk_bytes"] == 1048576


def _ecma_ok(schema: dict[str, Any], value: Any) -> bool:
    """The server's own validator (ECMA patterns) decides; this is its verdict."""
    validator = server._Validator(schema)  # noqa: SLF001 - the exact validator the server uses
    return validator.is_valid(value)


def _cases() -> list[tuple[str, str, str, Any]]:
    cases = []
    for (route, direction), messages in SAMPLES.items():
        for message in messages:
            cases.append((route, direction, message["type"], message))
            cases.extend(
                (route, direction, message["type"], mutant) for mutant in every_mutation(message)
            )
    return cases


def test_samples_cover_every_message_and_are_valid():
    covered = {
        (route, direction, m["type"]) for (route, direction), ms in SAMPLES.items() for m in ms
    }
    assert covered == {(r, d, k) for r, d, k, _ in MESSAGE_SCHEMAS}
    for (route, direction), messages in SAMPLES.items():
        for message in messages:
            assert _ecma_ok(ROUTES[route][direction][message["type"]], message), message


def test_the_three_checkers_agree_on_every_single_field_mutation():
    cases = _cases()
    assert len(cases) > 1000
    server_verdicts = [_ecma_ok(ROUTES[r][d][k], value) for r, d, k, value in cases]
    edge_verdicts = [check(ROUTES[r][d][k], value) is None for r, d, k, value in cases]
    assert edge_verdicts == server_verdicts
    payload = json.dumps(
        [{"route": r, "direction": d, "kind": k, "value": value} for r, d, k, value in cases]
    )
    assert _node("check", payload) == server_verdicts
    assert 0 < sum(server_verdicts) < len(cases)


SCHEMA_AND_SAMPLE = st.sampled_from(
    [(route, direction, m) for (route, direction), ms in SAMPLES.items() for m in ms]
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_edge_checker_agrees_with_the_server_validator_on_random_mutations(data):
    route, direction, message = data.draw(SCHEMA_AND_SAMPLE)
    value = data.draw(mutated(message))
    schema = ROUTES[route][direction][message["type"]]
    assert (check(schema, value) is None) == _ecma_ok(schema, value), value


def test_the_reference_tables_in_the_docs_are_generated_from_the_definition():
    spec = importlib.util.spec_from_file_location(
        "generate_protocol_defs", ROOT / "scripts" / "generate_protocol_defs.py"
    )
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    doc = (ROOT / "docs" / "protocol.md").read_text()
    start, end = doc.index(generator.DOC_BEGIN), doc.index(generator.DOC_END)
    expected = generator.render_doc_tables()
    assert doc[start : end + len(generator.DOC_END)] == expected, (
        "docs/protocol.md is stale: run scripts/generate_protocol_defs.py --docs"
    )
    assert (ROOT / "static" / "worker_frontend" / "protocol-defs.js").read_text() == (
        generator.render()
    )


def test_the_three_checkers_admit_any_type_of_a_list_of_types():
    # given the director's state sample with its nullable fields null (``"type": [.., "null"]``)
    state = next(m for m in SAMPLES[("director", "outbound")] if m["type"] == "state")
    nulled = json.loads(json.dumps(state))
    nulled["state"]["privacy"] = None
    assert "privacy" in ROUTES["director"]["outbound"]["state"]["properties"]["state"]["properties"]
    schema = ROUTES["director"]["outbound"]["state"]
    # then the server's validator, the edge checker and the browser's checker all admit it
    assert _ecma_ok(schema, nulled)
    assert check(schema, nulled) is None
    payload = json.dumps(
        [{"route": "director", "direction": "outbound", "kind": "state", "value": nulled}]
    )
    assert _node("check", payload) == [True]
