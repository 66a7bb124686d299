"""The ASGI process tunes its garbage collector from the settings, and refuses a bad setting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.site.test_health_settings_admin import ROOT, _clean_env

PROBE = "import gc, ccgsc_site.asgi; print(gc.get_threshold(), gc.get_freeze_count() > 0)"


def _asgi_gc(tmp_path, **extra: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    env = _clean_env(CCGSC_VAR_DIR=str(tmp_path), **extra)
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_asgi_freezes_its_startup_heap_and_collects_young_objects_rarely(tmp_path):
    result = _asgi_gc(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "(50000, 20, 10) True"


def test_the_thresholds_come_from_the_environment(tmp_path):
    result = _asgi_gc(tmp_path, CCGSC_ASGI_GC_THRESHOLDS="2000, 15")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "(2000, 15, 10) True"


@pytest.mark.parametrize("value", ["many", "1,2,3,4", "-5", "1.5"])
def test_a_bad_threshold_setting_is_refused_clearly(tmp_path, value):
    result = _asgi_gc(tmp_path, CCGSC_ASGI_GC_THRESHOLDS=value)
    assert result.returncode != 0
    assert "CCGSC_ASGI_GC_THRESHOLDS takes one to three non-negative integers" in result.stderr
