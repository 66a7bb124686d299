"""Generate static/worker_frontend/protocol-defs.js from the protocol definition.

The browser cannot read the edge worker's package data, so the build turns the one definition
(edge_worker/ccgsc_worker/protocol_v1.json, refs inlined) into an ES module. The output is not
committed; `make setup` and the test suite run this. Writes only when the content changed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "static" / "worker_frontend" / "protocol-defs.js"


def render() -> str:
    """The module's source text."""
    sys.path.insert(0, str(ROOT / "edge_worker"))
    from ccgsc_worker.protocol_schema import load_definition

    definition = load_definition(1)
    body = json.dumps(definition, indent=1, sort_keys=True, ensure_ascii=True)
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
    written = generate()
    print(f"{OUTPUT.relative_to(ROOT)} {'written' if written else 'up to date'}")
