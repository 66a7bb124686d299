"""The analytics job form: the query's columns as lines of text, then rounds and privacy."""

from __future__ import annotations

from typing import Any

from django import forms

from jobs.analytics import STATISTICS
from jobs.fl_models import DataSource, DpAccountant

COLUMNS_HELP = (
    "One column a line: name, feature index (in a row of the public data set), lo, hi, bins. "
    "Values are clipped to [lo, hi]. For contributors' own CSV files the name is the header."
)


def parse_columns(text: str) -> list[dict[str, Any]]:
    """Lines of ``name, feature, lo, hi, bins`` → column objects; raises ValidationError with
    the line that is wrong."""
    columns = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 5:
            raise forms.ValidationError(
                f"Line {number}: give name, feature, lo, hi, bins separated by commas."
            )
        name, feature, lo, hi, bins = parts
        try:
            columns.append(
                {"name": name, "feature": int(feature), "lo": float(lo), "hi": float(hi),
                 "bins": int(bins)}
            )  # fmt: skip
        except ValueError:
            raise forms.ValidationError(
                f"Line {number}: feature and bins are whole numbers, lo and hi numbers."
            ) from None
    if not columns:
        raise forms.ValidationError("Give at least one column.")
    return columns


class AnalyticsJobForm(forms.Form):
    """A federated analytics job; the defaults summarise four pixels of the digits."""

    name = forms.CharField(max_length=120, initial="Pixel statistics of the digits")
    columns = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5}),
        initial="px20, 20, 0, 1, 16\npx28, 28, 0, 1, 16\npx36, 36, 0, 1, 16\npx43, 43, 0, 1, 16",
        help_text=COLUMNS_HELP,
    )
    statistics = forms.MultipleChoiceField(
        choices=[(s, s) for s in STATISTICS],
        initial=list(STATISTICS),
        widget=forms.CheckboxSelectMultiple,
        help_text="What the results show (every column's vector carries all of them).",
    )
    quantiles = forms.CharField(
        initial="0.1, 0.25, 0.5, 0.75, 0.9",
        required=False,
        help_text="Interpolated from each histogram; within one bin width of the data's own.",
    )
    max_rows = forms.IntegerField(
        min_value=1,
        initial=1000,
        label="Rows per contributor",
        help_text="A contributor uses at most this many rows: the privacy sensitivity.",
    )
    data_source = forms.ChoiceField(choices=DataSource.choices, initial=DataSource.PUBLIC_PARTITION)
    dataset = forms.ChoiceField(
        choices=[("digits", "digits (1,797 8×8 images, 64 features)"), ("mnist10k", "MNIST 10k")],
        initial="digits",
        help_text="Public partitions are served by this site and are not private data.",
    )
    partition = forms.ChoiceField(choices=[("iid", "IID"), ("shards", "label shards")])
    partition_clients = forms.IntegerField(min_value=1, initial=10)
    rounds = forms.IntegerField(min_value=1, initial=1, help_text="Each round asks again.")
    cohort_size = forms.IntegerField(min_value=1, initial=3, label="Contributors per round")
    round_deadline_seconds = forms.IntegerField(min_value=10, initial=120, label="Deadline (s)")
    secure_aggregation = forms.BooleanField(required=False)
    differential_privacy = forms.BooleanField(required=False)
    dp_epsilon = forms.FloatField(required=False, label="Budget ε (all rounds)")
    dp_delta = forms.FloatField(initial=1e-5, label="δ")
    dp_accountant = forms.ChoiceField(choices=DpAccountant.choices, initial=DpAccountant.RDP)

    def clean_columns(self) -> list[dict[str, Any]]:
        return parse_columns(self.cleaned_data["columns"])

    def clean_quantiles(self) -> list[float]:
        text = self.cleaned_data.get("quantiles") or ""
        try:
            return [float(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise forms.ValidationError(
                "Quantiles are numbers from 0 to 1, comma separated."
            ) from None

    def spec_fields(self) -> dict[str, Any]:
        """The cleaned fields as ``AnalyticsJobSpec`` takes them."""
        return dict(self.cleaned_data)
