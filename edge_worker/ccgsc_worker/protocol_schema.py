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
from collections.abc import Callable
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
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return _is_integer(value)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


# What a compiled schema returns: None when the value fits, else (where below the value,
# reason); the path is built only on a failure.
Problem = tuple[str, str]
Checker = Callable[..., str | None]


def compile_check(schema: dict[str, Any]) -> Checker:
    """``schema`` turned into a function of ``(value, path="")`` that returns what
    :func:`check` returns, without reading the schema again.

    The schema becomes the source of one Python function (keywords decided once, each check
    one inline test) and is executed once. The source holds names only: every value from the
    schema (names, bounds, patterns, messages) reaches it as a constant of the function's
    namespace, never as text. Walking an ``assign``'s schema per message cost the edge worker
    ~61 µs, five times decoding its JSON; the compiled function takes ~18 µs
    (``bench/bench_protocol_check.py``). Hot paths keep compiled checkers (``SERVER_CHECKS`` on
    the worker, the server's inbound checkers)."""
    node = _Compiler().function(schema)

    def checker(value: Any, path: str = "") -> str | None:
        problem = node(value)
        if problem is None:
            return None
        below, reason = problem
        return f"{(path + below) or 'message'}: {reason}"

    return checker


def check(schema: dict[str, Any], value: Any, path: str = "") -> str | None:
    """The first way ``value`` breaks ``schema`` as ``"path: reason"``, or None when it fits.

    The checks of a node run in this order: type, const, enum, anyOf, then the keywords of the
    value's own JSON type (string lengths and pattern; number bounds; array sizes and items;
    an object's required fields, then its fields in the value's order).

    Compiles ``schema`` on its first check and keeps the result while the same schema object
    is checked again (a schema must not change once checked, as the loaded definition never
    does); hot paths keep ``compile_check(schema)`` themselves."""
    entry = _CHECKERS.get(id(schema))
    if entry is None or entry[0] is not schema:
        if len(_CHECKERS) >= _CHECKERS_KEPT:
            _CHECKERS.clear()
        entry = _CHECKERS[id(schema)] = (schema, compile_check(schema))
    return entry[1](value, path)


# Schemas ``check`` compiled, by identity (each entry holds its schema, so no other object takes
# its id while it is kept).
_CHECKERS: dict[int, tuple[dict[str, Any], Checker]] = {}
_CHECKERS_KEPT = 512


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or (math.isfinite(value) and value == int(value))


_TYPE_TESTS = {
    "object": "isinstance({v}, dict)",
    "array": "isinstance({v}, list)",
    "string": "isinstance({v}, str)",
    "boolean": "isinstance({v}, bool)",
    "null": "{v} is None",
    "number": "(isinstance({v}, (int, float)) and not isinstance({v}, bool))",
    "integer": "_is_integer({v})",
}
# What a node's asserted type tells of the value: which type's keywords apply without a test.
_KNOWN_BRANCH = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "array": "array",
    "object": "object",
}


class _Compiler:
    """Writes the source of a schema's check function (see :func:`compile_check`)."""

    def __init__(self) -> None:
        self.names: dict[str, Any] = {
            "_same": _same,
            "_is_type": _is_type,
            "_is_integer": _is_integer,
        }
        self.count = 0
        self.functions: list[list[str]] = []

    def constant(self, value: Any) -> str:
        name = f"k{len(self.names)}"
        self.names[name] = value
        return name

    def variable(self, stem: str = "v") -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def function(self, schema: dict[str, Any]) -> Callable[[Any], Problem | None]:
        name = self._define(schema)
        source = "\n\n".join("\n".join(lines) for lines in self.functions)
        namespace = dict(self.names)
        exec(compile(source, "<protocol schema>", "exec"), namespace)  # noqa: S102 - our source
        return namespace[name]

    def _define(self, schema: dict[str, Any]) -> str:
        """One top-level function checking ``schema``; its name."""
        name, value = self.variable("check_"), self.variable()
        lines = [f"def {name}({value}):"]
        self._node(schema, value, self.constant(""), lines, 1)
        lines.append("    return None")
        self.functions.append(lines)
        return name

    def _fail(self, lines: list[str], depth: int, test: str, path: str, reason: str) -> None:
        lines.append(f"{'    ' * depth}if {test}: return ({path}, {reason})")

    def _node(
        self, schema: dict[str, Any], v: str, path: str, lines: list[str], depth: int
    ) -> None:
        kind = schema.get("type")
        if kind is not None:
            kinds = kind if isinstance(kind, list) else [kind]  # a list: any of its types
            test = " or ".join(
                _TYPE_TESTS.get(one, "_is_type({v}, " + self.constant(one) + ")").format(v=v)
                for one in kinds
            )
            self._fail(lines, depth, f"not ({test})", path, self.constant(f"expected {kind}"))
        if "const" in schema:
            const = schema["const"]
            reason = self.constant(f"must be {const!r}")
            self._fail(lines, depth, f"not _same({v}, {self.constant(const)})", path, reason)
        if "enum" in schema:
            options = tuple(schema["enum"])
            reason = self.constant(f"must be one of {', '.join(map(str, options))}")
            test = f"not any(_same({v}, o) for o in {self.constant(options)})"
            self._fail(lines, depth, test, path, reason)
        if "anyOf" in schema:
            # Every form fails: each returns a problem (a non-empty tuple), tried in order.
            forms = " and ".join(f"{self._define(option)}({v})" for option in schema["anyOf"])
            reason = self.constant("matches none of the allowed forms")
            self._fail(lines, depth, f"({forms})", path, reason)
        branches = {
            "string": self._string(schema, v, path, depth + 1),
            "number": self._number(schema, v, path, depth + 1),
            "array": self._array(schema, v, path, depth + 1),
            "object": self._object(schema, v, path, depth + 1),
        }
        known = _KNOWN_BRANCH.get(kind) if isinstance(kind, str) else None
        if known is not None:  # the type test above already holds the value to one branch
            lines += [line[4:] for line in branches[known]]
            return
        tests = {
            "string": f"isinstance({v}, str)",
            "number": f"isinstance({v}, (int, float)) and not isinstance({v}, bool)",
            "array": f"isinstance({v}, list)",
            "object": f"isinstance({v}, dict)",
        }
        keyword = "if"
        for branch, body in branches.items():
            if body:
                lines.append(f"{'    ' * depth}{keyword} {tests[branch]}:")
                lines += body
                keyword = "elif"

    def _bound(
        self,
        lines: list[str],
        depth: int,
        schema: dict[str, Any],
        keyword: str,
        test: str,
        words: str,
        path: str,
    ) -> None:
        """A failure when ``test`` (``{bound}`` in it) holds for the schema's ``keyword``."""
        if keyword in schema:
            bound = schema[keyword]
            test = test.format(bound=self.constant(bound))
            self._fail(lines, depth, test, path, self.constant(words.format(bound)))

    def _string(self, schema: dict[str, Any], v: str, path: str, depth: int) -> list[str]:
        lines: list[str] = []
        self._bound(
            lines, depth, schema, "minLength", f"len({v}) < {{bound}}", "shorter than {}", path
        )
        self._bound(
            lines, depth, schema, "maxLength", f"len({v}) > {{bound}}", "longer than {}", path
        )
        if "pattern" in schema:
            search = self.constant(ecma_pattern(schema["pattern"]).search)
            reason = self.constant(f"does not match {schema['pattern']}")
            self._fail(lines, depth, f"{search}({v}) is None", path, reason)
        return lines

    def _number(self, schema: dict[str, Any], v: str, path: str, depth: int) -> list[str]:
        lines: list[str] = []
        self._bound(lines, depth, schema, "minimum", f"{v} < {{bound}}", "less than {}", path)
        self._bound(lines, depth, schema, "maximum", f"{v} > {{bound}}", "greater than {}", path)
        return lines

    def _array(self, schema: dict[str, Any], v: str, path: str, depth: int) -> list[str]:
        lines: list[str] = []
        fewest, most = f"len({v}) < {{bound}}", f"len({v}) > {{bound}}"
        self._bound(lines, depth, schema, "minItems", fewest, "fewer than {} items", path)
        self._bound(lines, depth, schema, "maxItems", most, "more than {} items", path)
        if "items" in schema:
            index, item = self.variable("i"), self.variable()
            body: list[str] = []
            self._node(schema["items"], item, f"{path} + '/' + str({index})", body, depth + 1)
            if body:
                lines.append(f"{'    ' * depth}for {index}, {item} in enumerate({v}):")
                lines += body
        return lines

    def _object(self, schema: dict[str, Any], v: str, path: str, depth: int) -> list[str]:
        lines: list[str] = []
        indent = "    " * depth
        required = tuple(schema.get("required", ()))
        if required:
            names = self.constant(required)
            test = f"not {self.constant(frozenset(required))} <= {v}.keys()"
            reason = f"'missing ' + ', '.join([n for n in {names} if n not in {v}])"
            self._fail(lines, depth, test, path, reason)
        properties = schema.get("properties", {})
        closed = schema.get("additionalProperties", True) is False
        if not (properties or closed):
            return lines
        key, item = self.variable("k_"), self.variable()
        body: list[str] = []
        keyword = "if"
        for name, part in properties.items():
            child: list[str] = []
            self._node(part, item, f"{path} + {self.constant('/' + name)}", child, depth + 2)
            if child or closed:
                body.append(f"{indent}    {keyword} {key} == {self.constant(name)}:")
                body += child or [f"{indent}        pass"]
                keyword = "elif"
        if closed:
            unexpected = f"'unexpected field ' + repr({key})"
            if keyword == "if":
                body.append(f"{indent}    return ({path}, {unexpected})")
            else:
                body += [f"{indent}    else:", f"{indent}        return ({path}, {unexpected})"]
        if body:
            lines.append(f"{indent}for {key}, {item} in {v}.items():")
            lines += body
        return lines
