"""Kernel behaviour from the manifest: summaries, index ranges and record counts, interpreted
generically (no code switches on kernel names)."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from jobs import services
from jobs.kernels import BUILD_MANIFEST
from jobs.manifest import SummaryError, index_limit, records_limit, summary_derive
from jobs.models import Job
from tenants.roles import Role

GRID = {"grid": [["x", "x0", "x1", "nx"], ["y", "y0", "y1", "ny"]]}
GRID_PARAMS = {"x0": -2.0, "x1": 2.0, "nx": 5, "y0": 0.0, "y1": 1.0, "ny": 3, "k": 2}


@pytest.mark.parametrize(
    ("declaration", "value", "params", "expected"),
    [
        ({}, [7], {}, {}),
        ({"primes": "value[0]"}, [9592], {}, {"primes": 9592}),
        (
            {"inside": "value[0]", "samples": "value[1]"},
            [785, 1000],
            {},
            {"inside": 785, "samples": 1000},
        ),
        ({"pi_estimate": {"ratio": ["value[0]", "value[1]"], "scale": 4}}, [3, 4], {}, {"pi_estimate": 3.0}),
        ({"pi_estimate": {"ratio": ["value[0]", "value[1]"], "scale": 4}}, [0, 0], {}, {"pi_estimate": None}),
        ({"half": {"ratio": ["value[0]", "value[1]"]}}, [1, 2], {}, {"half": 0.5}),
        (
            {"best": GRID},
            [{"index": 0, "value": 1.5}, {"index": 7, "value": 2.5}, {"index": 14, "value": 0.0}],
            GRID_PARAMS,
            {
                "best": [
                    {"index": 0, "x": -2.0, "y": 0.0, "value": 1.5},
                    {"index": 7, "x": 0.0, "y": 0.5, "value": 2.5},
                    {"index": 14, "x": 2.0, "y": 1.0, "value": 0.0},
                ]
            },
        ),
    ],
)  # fmt: skip
def test_summary_derive_table(declaration, value, params, expected):
    assert summary_derive(declaration, value, params) == expected


@pytest.mark.parametrize(
    "declaration", [{"x": "value[a]"}, {"x": "inside"}, {"x": {"median": []}}, {"x": 3}]
)
def test_unknown_declarations_are_refused(declaration):
    with pytest.raises(SummaryError):
        summary_derive(declaration, [1, 2], {})


def test_every_builtin_summary_is_understood(wasm_built):
    # given the manifest the build wrote, when each summary is interpreted on a dummy value
    manifest = json.loads(BUILD_MANIFEST.read_text())
    for spec in manifest["kernels"]:
        declaration = spec.get("summary", {})
        names = [p["name"] for p in spec.get("params", [])]
        params = dict.fromkeys(names, 2.0)
        value = [{"index": 1, "value": 0.5}] if spec["reducer"] == "best_k" else [1, 2]
        # then nothing is left uninterpreted
        assert set(summary_derive(declaration, value, params)) == set(declaration)


def test_kernel_sync_stores_the_declarations(kernels):
    assert kernels["prime_count"].summary == {"primes": "value[0]"}
    assert set(kernels["montecarlo_pi"].summary) == {"inside", "samples", "pi_estimate"}
    assert set(kernels["param_sweep"].summary) == {"best"}
    assert kernels["param_sweep"].index_range["max_hi"] == "nx * ny"
    assert kernels["param_sweep"].output_layout["max_records_param"] == "k"


CAP = (1 << 63) - 1


@pytest.mark.parametrize(
    ("declared", "params", "expected"),
    [
        ({}, {}, CAP),
        ({"min_lo": 0, "max_hi": 18446744073709551615}, {}, CAP),
        ({"max_hi": 1000}, {}, 1000),
        ({"max_hi": "nx * ny"}, {"nx": 401.0, "ny": 5.0}, 2005),
        ({"max_hi": "n*2"}, {"n": 7.0}, 14),
        ({"max_hi": "nx * ny"}, {"nx": 2.0**40, "ny": 2.0**40}, CAP),
    ],
)
def test_index_limit_table(declared, params, expected):
    assert index_limit(declared, params, CAP) == expected


def test_an_index_range_naming_an_unknown_parameter_is_refused():
    with pytest.raises(SummaryError):
        index_limit({"max_hi": "nx * depth"}, {"nx": 3.0}, CAP)


@pytest.mark.parametrize(
    ("layout", "params", "expected"),
    [
        ({}, {"k": 5.0}, None),
        ({"kind": "records", "max_records_param": "k"}, {"k": 5.0}, 5),
        ({"kind": "records", "max_records_param": "k"}, {}, None),
    ],
)
def test_records_limit_table(layout, params, expected):
    assert records_limit(layout, params) == expected


def test_a_job_past_the_declared_grid_is_refused(tenant, owner, kernels):
    spec = services.JobSpec(
        name="sweep",
        kernel=kernels["param_sweep"],
        range_start=0,
        range_end=10 * 10 + 1,
        chunk_size=50,
        params={"function_id": 0, "x0": -1, "x1": 1, "nx": 10, "y0": -1, "y1": 1, "ny": 10, "k": 3},
    )
    with pytest.raises(ValidationError) as refused:
        services.job_create(tenant=tenant, actor=owner, actor_role=Role.OWNER, spec=spec)
    assert refused.value.message_dict == {"range_end": ["range_end exceeds the grid size 100."]}
    assert not Job.objects.for_tenant(tenant).exists()
