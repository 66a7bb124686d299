"""The data schema of an FL job that trains on contributors' own local data.

With ``DataSource.CONTRIBUTOR_LOCAL`` the server never sees the data, so the tenant declares what
each contributor must provide and the browser checks a contributor's file against it before any
training: a CSV (a header row, one label column named or indexed, numeric features) or a folder
of images (one sub-folder per class, decoded to grey ``width × height`` pixels in [0, 1]). The
normalised schema is stored on ``FlConfig.local_data`` and sent in every invite's ``data.schema``
(``docs/federated-learning.md``). Since there is no shard to compare an update's declared sample
count with, ``max_local_samples`` caps it.
"""

from __future__ import annotations

from typing import Any

from jobs.services.fl_privacy_rules import is_number

LOCAL_FORMATS = ("csv", "images")
DEFAULT_MAX_LOCAL_SAMPLES = 10_000
MAX_LOCAL_SAMPLES = 1_000_000
MAX_IMAGE_SIDE = 64  # 64 × 64 = 4,096 features: the largest input layer a model may have
MAX_NAME_CHARS = 60
_CSV_KEYS = {"format", "features", "classes", "label_column", "label_index"}
_IMAGE_KEYS = {"format", "features", "classes", "image_width", "image_height", "class_names"}


def _is_count(value: Any, lo: int, hi: int) -> bool:
    return is_number(value) and value == int(value) and lo <= value <= hi


def _check_name(value: Any, what: str) -> str | None:
    """A column or class name: printable text, no path separator, not padded with spaces."""
    if not isinstance(value, str) or not value.strip():
        return f"Give {what} as non-empty text."
    if len(value) > MAX_NAME_CHARS:
        return f"{what.capitalize()} is at most {MAX_NAME_CHARS} characters."
    if value != value.strip() or any(c in value for c in "/\\") or not value.isprintable():
        return (
            f"{what.capitalize()} {value!r} has spaces around it, a slash or a control character."
        )
    return None


def _check_csv(schema: dict[str, Any], features: int) -> tuple[dict[str, Any], str | None]:
    column, index = schema.get("label_column"), schema.get("label_index")
    if (column is None) == (index is None):
        return {}, "A CSV schema names its label column (label_column) or gives its index."
    if column is not None:
        problem = _check_name(column, "the label column")
        return ({}, problem) if problem else ({"label_column": column}, None)
    if not _is_count(index, 0, features):
        return {}, f"The label index is a column number from 0 to {features} (the last one)."
    return {"label_index": int(index)}, None


def _check_images(
    schema: dict[str, Any], features: int, classes: int
) -> tuple[dict[str, Any], str | None]:
    width, height = schema.get("image_width"), schema.get("image_height")
    if not (_is_count(width, 1, MAX_IMAGE_SIDE) and _is_count(height, 1, MAX_IMAGE_SIDE)):
        return {}, f"Images are resized to a width and height of 1 to {MAX_IMAGE_SIDE} pixels."
    if int(width) * int(height) != features:
        return {}, (
            f"Grey {int(width)}×{int(height)} images have {int(width) * int(height)} pixels: the "
            f"model takes {features} inputs."
        )
    names = schema.get("class_names")
    if not isinstance(names, list) or len(names) != classes:
        return {}, f"Give the {classes} class names (the folder names, in label order)."
    for name in names:
        problem = _check_name(name, "a class name")
        if problem:
            return {}, problem
    if len(set(names)) != len(names):
        return {}, "Class names must differ from each other."
    return {"image_width": int(width), "image_height": int(height), "class_names": names}, None


def local_data_check(
    *, schema: Any, max_samples: Any, sizes: list[int], errors: dict[str, str]
) -> tuple[dict[str, Any], int | None]:
    """The normalised schema and sample cap of a contributor-local job, or ({}, None) with
    errors keyed ``local_data`` / ``max_local_samples``. ``sizes`` are the model's layer sizes
    (empty when the model itself was refused, in which case only the shape is checked)."""
    if max_samples is None:
        max_samples = DEFAULT_MAX_LOCAL_SAMPLES
    if not _is_count(max_samples, 1, MAX_LOCAL_SAMPLES):
        errors["max_local_samples"] = (
            f"The cap on a contributor's samples is 1 to {MAX_LOCAL_SAMPLES:,}."
        )
    if not isinstance(schema, dict):
        errors["local_data"] = (
            "Declare the data contributors must provide: format (csv or images), features, "
            "classes, and the label column or the image size and class names."
        )
        return {}, None
    data_format = schema.get("format")
    if data_format not in LOCAL_FORMATS:
        errors["local_data"] = f"The local data format is one of {', '.join(LOCAL_FORMATS)}."
        return {}, None
    unknown = sorted(set(schema) - (_CSV_KEYS if data_format == "csv" else _IMAGE_KEYS))
    features, classes = schema.get("features"), schema.get("classes")
    problem: str | None = None
    if unknown:
        problem = f"Unknown fields {unknown} for {data_format} data."
    elif not _is_count(features, 1, 4096) or not _is_count(classes, 2, 4096):
        problem = "Give the number of features (1 to 4,096) and of classes (2 to 4,096)."
    elif sizes and (features != sizes[0] or classes != sizes[-1]):
        problem = (
            f"The model takes {sizes[0]} inputs and predicts {sizes[-1]} classes: the data must "
            f"have {sizes[0]} features and {sizes[-1]} classes."
        )
    if problem:
        errors["local_data"] = problem
        return {}, None
    normal: dict[str, Any] = {"format": data_format, "features": int(features)}
    normal["classes"] = int(classes)
    if data_format == "csv":
        extra, problem = _check_csv(schema, int(features))
    else:
        extra, problem = _check_images(schema, int(features), int(classes))
    if problem:
        errors["local_data"] = problem
        return {}, None
    if "max_local_samples" in errors:
        return {}, None
    return normal | extra, int(max_samples)
