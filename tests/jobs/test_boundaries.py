"""Jobs never import billing: the money plane is reached through jobs/metering.py only."""

from __future__ import annotations

import ast
from pathlib import Path

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_no_module_of_jobs_imports_billing():
    offenders = {
        str(path.relative_to(JOBS.parent)): sorted(
            m for m in _imported_modules(path) if m == "billing" or m.startswith("billing.")
        )
        for path in JOBS.rglob("*.py")
    }
    assert {path: found for path, found in offenders.items() if found} == {}
