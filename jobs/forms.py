"""The job creation form."""

from __future__ import annotations

import json
import math
from typing import Any

from django import forms

from ccgsc_worker.abi import MAX_PARAMS
from jobs.models import Kernel

MAX_PARAM_NAME_LENGTH = 64


def params_shape_error(value: Any) -> str | None:
    """Why ``value`` cannot be a job's parameters, or None when it can.

    Parameters are an object of named numbers or a list of numbers (custom kernels), each finite
    as a float64. The page and the API check this at the edge, before the job service orders them
    against the kernel's schema, so a string, a nested object or a 400-digit integer is a field
    error rather than an exception deep inside job creation.
    """
    if isinstance(value, dict):
        if len(value) > MAX_PARAMS:
            return f"Give at most {MAX_PARAMS} parameters."
        for name, number in value.items():
            if not isinstance(name, str) or not 0 < len(name) <= MAX_PARAM_NAME_LENGTH:
                return f"Parameter names are 1 to {MAX_PARAM_NAME_LENGTH} characters."
            problem = _number_error(number)
            if problem:
                return f"{name}: {problem}"
        return None
    if isinstance(value, list):
        if len(value) > MAX_PARAMS:
            return f"Give a list of at most {MAX_PARAMS} numbers."
        for position, number in enumerate(value):
            problem = _number_error(number)
            if problem:
                return f"Item {position}: {problem}"
        return None
    return "Give an object of named numbers (or a list of numbers for custom kernels)."


def _number_error(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number."
    try:
        as_float = float(value)
    except OverflowError:
        return "is too large."
    if not math.isfinite(as_float):
        return "must be finite."
    return None


class JobForm(forms.Form):
    name = forms.CharField(max_length=120, initial="Primes below ten million")
    kernel = forms.ModelChoiceField(queryset=Kernel.objects.none(), empty_label=None)
    range_start = forms.IntegerField(min_value=0, initial=1, label="Range start")
    range_end = forms.IntegerField(min_value=1, initial=10_000_001, label="Range end (exclusive)")
    chunk_size = forms.IntegerField(
        min_value=1,
        initial=1_000_000,
        label="Task size",
        help_text="How many indices one task covers.",
    )
    quorum = forms.IntegerField(
        min_value=1,
        max_value=20,
        initial=2,
        help_text="Distinct contributors that must agree on each task.",
    )
    params = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        initial="{}",
        help_text='Kernel parameters as JSON, e.g. {"function_id": 0, "x0": -2, "x1": 2, "nx": 401, '
        '"y0": -1, "y1": 3, "ny": 401, "k": 5} for param_sweep.',
    )
    seed = forms.IntegerField(
        min_value=0, required=False, help_text="Leave empty for a random seed."
    )
    priority = forms.IntegerField(min_value=-100, max_value=100, initial=0)
    lease_seconds = forms.IntegerField(min_value=5, max_value=3600, initial=60)
    adaptive_replication = forms.BooleanField(
        required=False, help_text="Accept single results from trusted workers, with spot checks."
    )
    deadline = forms.DateTimeField(
        required=False, help_text="Optional, UTC, e.g. 2026-12-31 18:00."
    )

    def __init__(self, *args, kernels=None, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        super().__init__(*args, **kwargs)
        if kernels is not None:
            self.fields["kernel"].queryset = kernels

    def clean_params(self) -> dict | list:
        raw = self.cleaned_data.get("params") or "{}"
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from exc
        problem = params_shape_error(value)
        if problem:
            raise forms.ValidationError(problem)
        return value
