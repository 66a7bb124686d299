"""The protocol definition (``protocol_v<N>.json``): loading it, and a small schema checker.

Pure Python with no dependencies, so the edge worker needs no JSON Schema library. The checker
covers exactly the keywords the definition uses (a test keeps it that way and compares its
verdicts with the server's full validator); ``$ref`` into ``$defs`` is inlined on load.

A later version is added as ``protocol_v2.json`` in this directory; it may say ``"extends": 1``
and list only what it adds or changes (limits, codes, messages per route), merged over v1 here.
"""

from __future__ import annotations

import copy
import json
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

DEFINITION_DIR = Path(__file__).resolve().parent

# Keywords the checker understands; anything else in a message schema is a test failure.
SUPPORTED_KEYWORDS = frozenset(
    {
        "type",
        "const",
        "enum",
        "required",
        "properties",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "anyOf",
        "description",
    }
)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` over ``base`` (objects merge, anything else replaces)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace every ``{"$ref": "#/$defs/x", ...}`` with a copy of ``$defs.x`` plus the
    ref's sibling keywords (which narrow it, e.g. a ``maxLength``)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None:
            if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
                raise ValueError(f"only refs into $defs are supported, got {ref!r}")
            siblings = {key: value for key, value in node.items() if key != "$ref"}
            target = copy.deepcopy(defs[ref.removeprefix("#/$defs/")])
            return _inline({**target, **siblings}, defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def _read(version: int, directory: Path) -> dict[str, Any]:
    raw = json.loads((directory / f"protocol_v{version}.json").read_text(encoding="utf-8"))
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, int) or parent >= version:
        raise ValueError(f"protocol v{version} may only extend an earlier version")
    return _merge(_read(parent, directory), raw)


@cache
def load_definition(version: int = 1, directory: Path = DEFINITION_DIR) -> dict[str, Any]:
    """The protocol definition of ``version`` with its refs inlined (cached; do not mutate)."""
    raw = _read(version, directory)
    if raw.get("version") != version:
        raise ValueError(f"protocol_v{version}.json declares version {raw.get('version')!r}")
    defs = raw.get("$defs", {})
    definition = {key: value for key, value in raw.items() if key != "$defs"}
    definition["routes"] = _inline(definition["routes"], defs)
    definition["$defs"] = defs
    return definition


# ---------------------------------------------------------------- the checker


@cache
def ecma_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a JSON Schema (ECMA-262) pattern with ECMA's meaning of a final ``$``.

    In ECMA-262, ``$`` matches only at the very end; in Python it also matches before a final
    newline, which would let ``"<uuid>\\n"`` pass ``^...$``. ``\\Z`` is ECMA's ``$``.
    """
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _is_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if kind == "number":
        return True
    return isinstance(value, int) or (math.isfinite(value) and value == int(value))


def _same(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def check(schema: dict[str, Any], value: Any, path: str = "") -> str | None:
    """The first way ``value`` breaks ``schema`` as ``"path: reason"``, or None when it fits."""
    where = path or "message"
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        return f"{where}: expected {kind}"
    if "const" in schema and not _same(value, schema["const"]):
        return f"{where}: must be {schema['const']!r}"
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        return f"{where}: must be one of {', '.join(map(str, schema['enum']))}"
    if "anyOf" in schema and all(check(option, value, path) for option in schema["anyOf"]):
        return f"{where}: matches none of the allowed forms"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{where}: shorter than {schema['minLength']}"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{where}: longer than {schema['maxLength']}"
        if "pattern" in schema and not ecma_pattern(schema["pattern"]).search(value):
            return f"{where}: does not match {schema['pattern']}"
    elif _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{where}: less than {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{where}: greater than {schema['maximum']}"
    elif isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return f"{where}: fewer than {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{where}: more than {schema['maxItems']} items"
        if "items" in schema:
            for index, item in enumerate(value):
                problem = check(schema["items"], item, f"{path}/{index}")
                if problem:
                    return problem
    elif isinstance(value, dict):
        return _check_object(schema, value, path)
    return None


def _check_object(schema: dict[str, Any], value: dict[str, Any], path: str) -> str | None:
    missing = [name for name in schema.get("required", ()) if name not in value]
    if missing:
        return f"{path or 'message'}: missing {', '.join(missing)}"
    properties = schema.get("properties", {})
    for name, item in value.items():
        if name in properties:
            problem = check(properties[name], item, f"{path}/{name}")
            if problem:
                return problem
        elif schema.get("additionalProperties", True) is False:
            return f"{path or 'message'}: unexpected field {name!r}"
    return None
