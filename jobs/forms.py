"""The job creation forms: federated computing and federated learning."""

from __future__ import annotations

import json
import math
from typing import Any

from django import forms

from ccgsc_worker.abi import MAX_PARAMS
from jobs.fl_models import (
    ClientOptimizer,
    Compression,
    DataSource,
    DpAccountant,
    DpMode,
    DpSampling,
    FlMode,
    Partition,
    ServerStrategy,
    StalenessWeighting,
    TrainingKernel,
)
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


PRIVACY_FIELDS = (
    "secure_aggregation",
    "secagg_threshold_fraction",
    "secagg_min_survivors",
    "cohort_max_anonymous_fraction",
    "differential_privacy",
    "dp_epsilon",
    "dp_delta",
    "dp_noise_multiplier",
    "dp_clip_norm",
    "dp_accountant",
    "dp_mode",
    "dp_sampling",
    "dp_population",
    "dp_adaptive_clipping",
    "dp_target_quantile",
)


class FlJobForm(forms.Form):
    """A federated learning job. The defaults are the demo: the 2NN of McMahan et al. 2017 on the
    digits partition, two label shards per client (non-IID), FedAvg, E = 1, B = 10."""

    name = forms.CharField(max_length=120, initial="2NN on non-IID digits")
    model_kernel = forms.ChoiceField(
        choices=TrainingKernel.choices, initial=TrainingKernel.MLP, label="Model"
    )
    model_sizes = forms.CharField(
        initial="64, 200, 200, 10",
        label="Layer sizes",
        help_text="Inputs, hidden layers, classes. The 2NN is 784, 200, 200, 10 on 28×28 images; "
        "digits images are 8×8 (64 inputs). The CNN takes 784, 10.",
    )
    data_source = forms.ChoiceField(choices=DataSource.choices, initial=DataSource.PUBLIC_PARTITION)
    dataset = forms.ChoiceField(
        choices=[("digits", "digits (1,797 8×8 images)"), ("mnist10k", "MNIST, first 10,000")],
        initial="digits",
        required=False,
        help_text="Public partitions are served by this site and are not private data.",
    )
    partition = forms.ChoiceField(
        choices=[("", "—"), *Partition.choices], initial=Partition.SHARDS, required=False
    )
    shards_per_client = forms.IntegerField(
        min_value=1, initial=2, required=False, help_text="k-shards: label shards per client."
    )
    dirichlet_alpha = forms.FloatField(
        required=False, help_text="Dirichlet(α): smaller α, more label skew."
    )
    partition_clients = forms.IntegerField(min_value=1, initial=100, required=False)
    # Contributors' own data: the schema their file must match (LOCAL_DATA_FIELDS).
    local_format = forms.ChoiceField(
        choices=[("", "—"), ("csv", "CSV file"), ("images", "Folder of images, one per class")],
        required=False,
        label="Local data format",
        help_text="Contributors' own data only: what each contributor picks on the worker page.",
    )
    local_features = forms.IntegerField(
        min_value=1, required=False, help_text="Local data: features; default the model's inputs."
    )
    local_classes = forms.IntegerField(
        min_value=2, required=False, help_text="Local data: classes; default the model's outputs."
    )
    local_label = forms.CharField(
        max_length=60,
        required=False,
        label="CSV label column",
        help_text="Its header name, or its 0-based index written as digits.",
    )
    local_image_size = forms.CharField(
        max_length=9,
        required=False,
        label="Image size",
        help_text="Grey width×height, e.g. 8x8 or 28x28 (their product is the features).",
    )
    local_class_names = forms.CharField(
        max_length=4000,
        required=False,
        label="Class names",
        help_text="Images: the folder names in label order, separated by commas.",
    )
    max_local_samples = forms.IntegerField(
        min_value=1,
        max_value=1_000_000,
        required=False,
        help_text="Local data: the most samples one update may declare (default 10,000).",
    )
    rounds = forms.IntegerField(min_value=1, max_value=10_000, initial=50)
    cohort_size = forms.IntegerField(
        min_value=1, initial=10, required=False, help_text="Clients per round (or a fraction)."
    )
    cohort_fraction = forms.FloatField(required=False, help_text="C: fraction of the clients.")
    over_selection = forms.FloatField(
        initial=1.0, help_text="Invite this many times the cohort to absorb dropouts."
    )
    min_reports = forms.IntegerField(
        min_value=1, required=False, help_text="Reports a round needs to close; default the cohort."
    )
    round_deadline_seconds = forms.IntegerField(initial=120, label="Round deadline (s)")
    target_accuracy = forms.FloatField(
        required=False, help_text="Stop once the global model reaches it, e.g. 0.97."
    )
    local_epochs = forms.IntegerField(initial=1, label="E (local epochs)")
    batch_size = forms.IntegerField(initial=10, label="B (batch size)")
    learning_rate = forms.FloatField(initial=0.05)
    client_optimizer = forms.ChoiceField(choices=ClientOptimizer.choices, initial="sgd")
    momentum = forms.FloatField(initial=0.0)
    proximal_mu = forms.FloatField(initial=0.0, label="FedProx μ", help_text="0 is plain FedAvg.")
    server_strategy = forms.ChoiceField(choices=ServerStrategy.choices, initial="fedavg")
    strategy_options = forms.CharField(
        required=False,
        initial="{}",
        help_text='JSON, e.g. {"server_momentum": 0.9} for FedAvgM, {"beta": 0.1} for the trimmed '
        "mean. Robust strategies are part of FL Enterprise.",
    )
    compression = forms.ChoiceField(
        choices=Compression.choices,
        initial="none",
        help_text="Smaller uploads: int8 (¼), top-k (the fraction below), signSGD (1/32, FedAvg "
        'only; its step is {"server_learning_rate": 0.001} in the strategy options).',
    )
    topk_fraction = forms.FloatField(required=False, help_text="Top-k: fraction kept.")
    # Privacy (the template draws these as their own section: PRIVACY_FIELDS).
    secure_aggregation = forms.BooleanField(
        required=False,
        help_text="Masks every update so the server learns only the cohort's sum. Cannot combine "
        "with robust strategies, which need each update.",
    )
    secagg_threshold_fraction = forms.FloatField(
        required=False,
        initial=0.5,
        label="Threshold t/k",
        help_text="t = ⌊(t/k)·k⌋ + 1 of a client's k neighbours unmask it; k = 2⌈log₂ n⌉ for n "
        "invited clients (all of them when that is not smaller). 0.5 to below 1.",
    )
    secagg_min_survivors = forms.IntegerField(
        required=False,
        min_value=3,
        label="Minimum survivors",
        help_text="Fewer masked inputs abort the round; default the minimum reports.",
    )
    cohort_max_anonymous_fraction = forms.FloatField(
        required=False,
        min_value=0.0,
        max_value=1.0,
        label="Anonymous contributors, at most",
        help_text="With secure aggregation or differential privacy, at most this fraction of each "
        "cohort may be contributors without an account (one worker per contributor always): "
        "anonymous devices cost nothing to multiply, and such Sybils collude toward a client's "
        "threshold and can withhold noise. Each client's threshold t counts all its anonymous "
        "neighbours plus a strict share of its accounted ones. Default 0.25 (FL Core's bound; "
        "FL Enterprise allows up to 0.5); 0 admits account holders and the private pool only.",
    )
    differential_privacy = forms.BooleanField(
        required=False, help_text="Clip each update and add Gaussian noise to the sum."
    )
    dp_epsilon = forms.FloatField(
        required=False, label="Budget ε", help_text="The job stops admitting rounds past it."
    )
    dp_delta = forms.FloatField(
        required=False,
        initial=1e-5,
        label="δ",
        help_text="Below 10⁻³, and below 1/population for an enrolled population.",
    )
    dp_noise_multiplier = forms.FloatField(
        required=False, label="Noise multiplier z", help_text="Noise std on the sum is z·C."
    )
    dp_clip_norm = forms.FloatField(
        required=False, label="Clip norm C", help_text="L2 bound on each update."
    )
    dp_accountant = forms.ChoiceField(
        choices=DpAccountant.choices, initial=DpAccountant.RDP, required=False, label="Accountant"
    )
    dp_mode = forms.ChoiceField(
        choices=DpMode.choices,
        initial=DpMode.CENTRAL,
        required=False,
        label="Noise",
        help_text="Central: the server adds Gaussian noise to the sum, so it sees the clean sum "
        "first. Distributed: each client adds a Skellam share before masking and the server "
        "adds none; needs secure aggregation and a fixed clip norm, accounted with RDP at q = 1.",
    )
    dp_sampling = forms.ChoiceField(
        choices=DpSampling.choices,
        initial=DpSampling.VOLUNTEER,
        required=False,
        label="Sampling rule",
        help_text="Volunteers who happen to be online are not a random sample of a known "
        "population, so no privacy amplification by sampling is claimed for them: each round "
        "is accounted at q = 1. Only a stated, enrolled population sampled independently at "
        "q = cohort / population may claim less.",
    )
    dp_population = forms.IntegerField(
        required=False, min_value=1, label="Enrolled population", help_text="Enrolled rule only."
    )
    dp_adaptive_clipping = forms.BooleanField(
        required=False,
        label="Adaptive clipping",
        help_text="C follows a quantile of update norms (Andrew et al. 2021).",
    )
    dp_target_quantile = forms.FloatField(required=False, initial=0.5, label="Target quantile γ")
    mode = forms.ChoiceField(choices=FlMode.choices, initial="sync")
    buffer_size = forms.IntegerField(required=False, help_text="Async: K updates per step.")
    staleness_bound = forms.IntegerField(required=False, help_text="Async: oldest version kept.")
    staleness_weighting = forms.ChoiceField(
        choices=[("", "—"), *StalenessWeighting.choices], required=False
    )
    seed = forms.IntegerField(
        min_value=0, required=False, help_text="Leave empty for a random seed."
    )

    def training_fields(self) -> list[forms.BoundField]:
        """Every field but the privacy section's, in order."""
        return [field for field in self if field.name not in PRIVACY_FIELDS]

    def privacy_fields(self) -> list[forms.BoundField]:
        """The privacy section's fields, in order."""
        return [self[name] for name in PRIVACY_FIELDS]

    def clean_model_sizes(self) -> list[int]:
        raw = self.cleaned_data.get("model_sizes") or ""
        try:
            return [int(part) for part in raw.replace(",", " ").split()]
        except ValueError as exc:
            raise forms.ValidationError("Give whole numbers separated by commas.") from exc

    def clean_strategy_options(self) -> dict:
        raw = self.cleaned_data.get("strategy_options") or "{}"
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise forms.ValidationError("Give an object.")
        return value

    def clean_local_image_size(self) -> tuple[int, int] | None:
        raw = (self.cleaned_data.get("local_image_size") or "").lower().replace("×", "x")
        if not raw.strip():
            return None
        try:
            width, height = (int(part) for part in raw.split("x"))
        except ValueError as exc:
            raise forms.ValidationError("Give the size as width x height, e.g. 28x28.") from exc
        return width, height

    def local_data_schema(self) -> dict[str, Any] | None:
        """The local data schema from the form's fields (checked by the service), or None."""
        data = self.cleaned_data
        if not data.get("local_format"):
            return None
        sizes = data.get("model_sizes") or [None]
        schema: dict[str, Any] = {
            "format": data["local_format"],
            "features": data.get("local_features") or sizes[0],
            "classes": data.get("local_classes") or sizes[-1],
        }
        label = (data.get("local_label") or "").strip()
        size = data.get("local_image_size")
        if data["local_format"] == "csv":
            schema["label_index" if label.isdigit() else "label_column"] = (
                int(label) if label.isdigit() else label or None
            )
        elif size:
            schema["image_width"], schema["image_height"] = size
        if data["local_format"] == "images":
            names = data.get("local_class_names") or ""
            schema["class_names"] = [name.strip() for name in names.split(",") if name.strip()]
        return {key: value for key, value in schema.items() if value is not None}

    def spec_fields(self) -> dict:
        """The cleaned data as ``FlJobSpec`` keyword arguments (blank optional fields dropped)."""
        local_data = self.local_data_schema()
        data = {
            k: v
            for k, v in self.cleaned_data.items()
            if v is not None and not k.startswith("local_")
        }
        if local_data is not None:
            data["local_data"] = local_data
        for name in ("dataset", "partition", "dp_accountant", "dp_mode", "dp_sampling"):
            if not data.get(name):
                data.pop(name, None)
        if "cohort_fraction" in data:
            data["cohort_size"] = None
        elif "cohort_size" not in data:
            data["cohort_size"] = 10
        return data
