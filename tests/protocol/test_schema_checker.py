"""The small checker compiled to a function (``protocol_schema.compile_check``): what it says
about a message that breaks its schema, that schema text stays data, and that it reads a list
of types as JSON Schema does. (Its verdicts against the server's full validator on thousands of
mutated messages: ``test_definition``.)"""

from __future__ import annotations

from typing import Any

import pytest

from ccgsc_worker import protocol_schema
from ccgsc_worker.protocol_schema import check, compile_check
from jobs import protocol as server


def _valid(schema: dict[str, Any], value: Any) -> bool:
    """The server's full validator (Draft 2020-12, ECMA patterns) decides."""
    return server._Validator(schema).is_valid(value)  # noqa: SLF001 - the server's own


MESSAGE = {
    "type": "object",
    "required": ["kind", "items"],
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": ["a", "b"]},
        "items": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "required": ["id"],
                "properties": {
                    "id": {"type": "string", "pattern": "^[0-9a-f]{4}$"},
                    "size": {"type": "integer", "minimum": 0, "maximum": 10},
                },
            },
        },
        "note": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
    },
}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"kind": "a", "items": []}, None),
        ({"kind": "a", "items": [{"id": "00ff", "size": 3}], "note": None}, None),
        ([], "message: expected object"),
        ({}, "message: missing kind, items"),
        ({"kind": "c", "items": []}, "/kind: must be one of a, b"),
        ({"kind": "a", "items": [], "extra": 1}, "message: unexpected field 'extra'"),
        ({"kind": "a", "items": [{}, {}, {}, {}]}, "/items: more than 3 items"),
        ({"kind": "a", "items": [{"id": "00ff"}, {}]}, "/items/1: missing id"),
        ({"kind": "a", "items": [{"id": "00ff\n"}]}, "/items/0/id: does not match ^[0-9a-f]{4}$"),
        ({"kind": "a", "items": [{"id": "00ff", "size": 11}]}, "/items/0/size: greater than 10"),
        ({"kind": "a", "items": [{"id": "00ff", "size": 2.5}]}, "/items/0/size: expected integer"),
        ({"kind": "a", "items": [{"id": "00ff", "size": True}]}, "/items/0/size: expected integer"),
        ({"kind": "a", "items": [], "note": "toolong"}, "/note: matches none of the allowed forms"),
    ],
)
def test_the_compiled_checker_names_the_first_problem_and_where_it_is(value: Any, problem: str):
    assert compile_check(MESSAGE)(value) == problem
    assert check(MESSAGE, value) == problem
    assert (problem is None) == _valid(MESSAGE, value)


def test_a_path_given_to_the_checker_prefixes_where_the_problem_is():
    checker = compile_check(MESSAGE)
    assert checker({"kind": "c", "items": []}, "/body") == "/body/kind: must be one of a, b"
    assert checker([], "/body") == "/body: expected object"


def test_schema_text_is_data_in_the_compiled_function_never_code():
    # given names, constants and patterns that would be code if pasted into the function's source
    name = "x'] or __import__('os').system('false') or ['"
    schema = {
        "type": "object",
        "required": [name],
        "properties": {name: {"const": "\"'\n)"}, "p": {"type": "string", "pattern": "^'\\)$"}},
    }
    checker = compile_check(schema)
    # then they are compared as the values they are
    assert checker({name: "\"'\n)", "p": "')"}) is None
    assert checker({name: "other"}) == f"/{name}: must be {'"\'\n)'!r}"
    assert checker({}) == f"message: missing {name}"
    assert checker({name: "\"'\n)", "p": "x"}) == "/p: does not match ^'\\)$"


@pytest.mark.parametrize(
    ("value", "fits"),
    [(None, True), (1.5, True), (2, True), ("2", False), (True, False), ([], False)],
)
def test_a_list_of_types_admits_any_of_them_as_json_schema_does(value: Any, fits: bool):
    schema = {"type": ["number", "null"], "minimum": 0}
    assert (check(schema, value) is None) is fits
    assert _valid(schema, value) is fits


def test_check_keeps_one_compiled_function_per_schema_it_is_given():
    schema = {"type": "string", "maxLength": 2}
    other = {"type": "string", "maxLength": 4}
    assert check(schema, "abc") == "message: longer than 2"
    kept = protocol_schema._CHECKERS[id(schema)]  # noqa: SLF001 - the cache under test
    assert check(other, "abc") is None
    assert check(schema, "ab") is None
    assert protocol_schema._CHECKERS[id(schema)] is kept  # noqa: SLF001 - not compiled again
