"""Generate static/worker_frontend/protocol-defs.js (and, with --docs, the reference tables of
docs/protocol.md) from the protocol definition.

The browser cannot read the edge worker's package data, so the build turns the one definition
(edge_worker/ccgsc_worker/protocol_v1.json, refs inlined) into an ES module. The module is not
committed; `make setup` and the test suite run this. Writes only when the content changed.
The tables in docs/protocol.md are committed; a test fails when they drift from the definition.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "static" / "worker_frontend" / "protocol-defs.js"
DOC = ROOT / "docs" / "protocol.md"
DOC_BEGIN = "<!-- generated from protocol_v1.json by scripts/generate_protocol_defs.py --docs -->"
DOC_END = "<!-- end of generated reference -->"


def _definition() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "edge_worker"))
    from ccgsc_worker.protocol_schema import load_definition

    return load_definition(1)


def _fields(schema: dict[str, Any]) -> str:
    required = [name for name in schema["required"] if name not in ("v", "type")]
    optional = [name for name in schema.get("properties", {}) if name not in schema["required"]]
    text = ", ".join(f"`{name}`" for name in required) or "—"
    if optional:
        text += " (optional: " + ", ".join(f"`{name}`" for name in optional) + ")"
    return text


def render_doc_tables() -> str:
    """The reference section of docs/protocol.md, between its markers."""
    definition = _definition()
    lines = [DOC_BEGIN, "", "### Messages", "", "| route | direction | type | fields |"]
    lines.append("|---|---|---|---|")
    for route, spec in definition["routes"].items():
        for direction in ("inbound", "outbound"):
            arrow = "client → server" if direction == "inbound" else "server → client"
            for kind, schema in spec[direction].items():
                frame = " (binary frame header)" if kind == spec["binary_inbound"] else ""
                if direction == "outbound":
                    frame = ""
                lines.append(f"| {route} | {arrow} | `{kind}`{frame} | {_fields(schema)} |")
    lines += ["", "### Limits", "", "| limit | value | what it bounds |", "|---|---|---|"]
    for name, value in definition["limits"].items():
        lines.append(f"| `{name}` | {value:,} | {definition['limit_notes'][name]} |")
    lines += ["", "### Close codes", "", "| code | name | routes | reconnect? | meaning |"]
    lines.append("|---|---|---|---|---|")
    for code, info in definition["close_codes"].items():
        again = "yes" if info["reconnect"] else "**no**"
        routes = ", ".join(info["routes"])
        lines.append(f"| {code} | `{info['name']}` | {routes} | {again} | {info['meaning']} |")
    lines += ["", "### Error codes", "", "| kind | code | meaning |", "|---|---|---|"]
    for kind, codes in definition["error_codes"].items():
        for code, meaning in codes.items():
            lines.append(f"| {kind} | `{code}` | {meaning} |")
    lines += ["", "### Ack statuses and cancel reasons", "", "| message | value | meaning |"]
    lines.append("|---|---|---|")
    for status, meaning in definition["ack_statuses"].items():
        lines.append(f"| `ack.status` | `{status}` | {meaning} |")
    for reason, meaning in definition["cancel_reasons"].items():
        lines.append(f"| `cancel.reason` | `{reason}` | {meaning} |")
    lines += [
        "",
        f"Type names match `{definition['type_name_pattern']}`. Patterns are ECMA-262 regular "
        "expressions (a final `$` never matches before a trailing newline).",
        "",
        DOC_END,
    ]
    return "\n".join(lines)


def generate_doc(doc: Path = DOC) -> bool:
    """Replace the generated section of docs/protocol.md; return whether it changed."""
    text = doc.read_text(encoding="utf-8")
    start, end = text.index(DOC_BEGIN), text.index(DOC_END) + len(DOC_END)
    updated = text[:start] + render_doc_tables() + text[end:]
    if updated == text:
        return False
    doc.write_text(updated, encoding="utf-8")
    return True


def render() -> str:
    """The module's source text."""
    definition = _definition()
    body = json.dumps(definition, indent=1, ensure_ascii=True)
    return (
        "// Generated from edge_worker/ccgsc_worker/protocol_v1.json by\n"
        "// scripts/generate_protocol_defs.py. Do not edit: edit the definition and rebuild.\n"
        "function deepFreeze(value) {\n"
        '  if (value && typeof value === "object") {\n'
        "    Object.values(value).forEach(deepFreeze);\n"
        "    Object.freeze(value);\n"
        "  }\n"
        "  return value;\n"
        "}\n\n"
        f"export const DEFINITION = deepFreeze({body});\n"
    )


def generate(output: Path = OUTPUT) -> bool:
    """Write the module if it is missing or stale; return whether it was written."""
    text = render()
    if output.exists() and output.read_text(encoding="utf-8") == text:
        return False
    output.write_text(text, encoding="utf-8")
    return True


if __name__ == "__main__":
    if "--docs" in sys.argv:
        print(f"{DOC.relative_to(ROOT)} {'updated' if generate_doc() else 'up to date'}")
    written = generate()
    print(f"{OUTPUT.relative_to(ROOT)} {'written' if written else 'up to date'}")
