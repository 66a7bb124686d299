"""The architecture, enforced: which app may import which, and which modules stay Django-free.

Billing is downstream of jobs (jobs reaches it only through the ``jobs.metering`` port), and
tenants is upstream of both. import-linter checks every import statement, at module level and
inside functions alike. The pure modules are imported in a fresh interpreter that must not load
Django at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EDGE_WORKER = ROOT / "edge_worker"

CONTRACTS = """
[importlinter]
root_packages =
    tenants
    jobs
    billing
include_external_packages = False

[importlinter:contract:jobs-not-billing]
name = jobs never imports billing (it reaches billing through jobs.metering)
type = forbidden
source_modules =
    jobs
forbidden_modules =
    billing
allow_indirect_imports = True

[importlinter:contract:tenants-upstream]
name = tenants imports neither jobs nor billing
type = forbidden
source_modules =
    tenants
forbidden_modules =
    jobs
    billing
allow_indirect_imports = True
"""

# Modules that must import without Django (a missing one fails: a rename must update this list).
PURE_MODULES = [
    "billing.money",
    "ccgsc_worker.abi",
    "ccgsc_worker.protocol",
    "jobs.protocol",
    "jobs.quorum",
    "jobs.aggregation",
    "jobs.secagg",
    "ccgsc_worker.secagg",
    "ccgsc_worker.secagg.wire",
    "jobs.privacy",
    "jobs.federated",
    "jobs.analytics",
    "ccgsc_worker.analytics_abi",
    "ccgsc_worker.compression",
]


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(EDGE_WORKER)])
    return env


def test_import_contracts_hold(tmp_path):
    config = tmp_path / "contracts.ini"
    config.write_text(CONTRACTS)
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(linter), "--config", str(config), "--no-cache", "--no-logo"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_loads_no_django(module):
    probe = textwrap.dedent(
        f"""
        import importlib, json, sys
        importlib.import_module({module!r})
        print(json.dumps(sorted(m for m in sys.modules if m == "django" or m.startswith("django."))))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
