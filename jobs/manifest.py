"""What the kernel manifest (wasm/kernels.json) declares about a kernel, interpreted.

Pure and Django-free. Three declarations are understood:

``range.max_hi`` — the largest index a job may reach: a number, or a product of parameter names
and numbers (``"nx * ny"``); see :func:`index_limit`.

``output.max_records_param`` — the parameter that bounds how many records a best-k result keeps;
see :func:`records_limit`.

``summary`` — what the reduced output means. It maps result names to derivations, evaluated in
order:

- ``"value[i]"`` — the i-th number of the reduced vector (sum reducers);
- ``{"ratio": ["value[0]", "value[1]"], "scale": 4}`` — ``scale * a / b`` (None when b is 0);
- ``{"grid": [["x", "x0", "x1", "nx"], ["y", "y0", "y1", "ny"]]}`` — maps each record of a
  best-k result (``{"index", "value"}``) onto a regular grid whose first axis varies fastest:
  axis ``name`` runs from parameter ``first`` to ``last`` in ``count`` points.

Kernels without a declaration (tenant uploads) get only the reducer and the decoded value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_INDEX = re.compile(r"^value\[(\d+)\]$")


class SummaryError(ValueError):
    """A summary declaration the interpreter does not understand."""


def _pick(reference: str, value: Any) -> Any:
    match = _INDEX.match(reference)
    if match is None or not isinstance(value, list):
        raise SummaryError(f"cannot read {reference!r} from this result")
    return value[int(match.group(1))]


def _grid(axes: Sequence[Sequence[str]], value: Any, params: Mapping[str, float]) -> list:
    points = []
    for record in value:
        point: dict[str, Any] = {"index": record["index"]}
        rest = record["index"]
        for name, first, last, count in axes:
            points_on_axis = int(params[count])
            step = rest % points_on_axis
            rest //= points_on_axis
            low, high = params[first], params[last]
            point[name] = low + (high - low) * step / (points_on_axis - 1)
        point["value"] = record["value"]
        points.append(point)
    return points


def summary_derive(
    declaration: Mapping[str, Any], value: Any, params: Mapping[str, float]
) -> dict[str, Any]:
    """The named results a declaration derives from a decoded reduced ``value`` and the job's
    parameters (by name). Does not modify its inputs."""
    derived: dict[str, Any] = {}
    for name, rule in declaration.items():
        if isinstance(rule, str):
            derived[name] = _pick(rule, value)
        elif isinstance(rule, Mapping) and "ratio" in rule:
            numerator, denominator = (_pick(r, value) for r in rule["ratio"])
            scale = rule.get("scale", 1)
            derived[name] = scale * numerator / denominator if denominator else None
        elif isinstance(rule, Mapping) and "grid" in rule:
            derived[name] = _grid(rule["grid"], value, params)
        else:
            raise SummaryError(f"unknown summary rule for {name!r}: {rule!r}")
    return derived


def index_limit(declared_range: Mapping[str, Any], params: Mapping[str, float], cap: int) -> int:
    """The largest ``range_end`` a job may use, at most ``cap``."""
    max_hi = declared_range.get("max_hi")
    if isinstance(max_hi, int):
        return min(max_hi, cap)
    if not isinstance(max_hi, str):
        return cap
    limit = 1
    for factor in (part.strip() for part in max_hi.split("*")):
        if factor in params:
            limit *= int(params[factor])
        elif factor.isdigit():
            limit *= int(factor)
        else:
            raise SummaryError(f"cannot evaluate range max_hi {max_hi!r}")
    return min(limit, cap)


def records_limit(output_layout: Mapping[str, Any], params: Mapping[str, float]) -> int | None:
    """How many records a result keeps (the value of ``max_records_param``), if declared."""
    name = output_layout.get("max_records_param")
    return int(params[name]) if name in params else None
