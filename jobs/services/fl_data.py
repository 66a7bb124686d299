"""The public data of an FL job, rebuilt deterministically from its configuration: the
partition clients' shards (what workers train), each client's sample count (the cap on what a
client may declare), and the held-out split (what the server evaluates each version on).

Public partitions only (``DataSource.PUBLIC_PARTITION``, marked not private): contributors' own
data never passes through here. The data set is split 80/20, stratified and seeded by the
job's seed; the 80 % is partitioned across clients with the same seed; the 20 % is held out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from django.core.cache import cache

from jobs.fl_models import DataSource, FlConfig
from jobs.models import Job

TEST_FRACTION = 0.2
# Partition sizes never change for a job (its configuration and seed are fixed): cached for a
# day in the shared cache, so every process computes them at most once per job and day.
SIZES_CACHE_SECONDS = 24 * 3600


def has_public_partition(config: FlConfig | None) -> bool:
    """Whether the job trains on a public partition the server can rebuild."""
    return (
        config is not None
        and config.data_source == DataSource.PUBLIC_PARTITION
        and not config.data_is_private
        and bool(config.partition_clients)
    )


def _split(*, dataset: str, seed: int) -> tuple[Any, Any]:
    from jobs.federated import data  # heavy imports (scikit-learn), only when used

    source = data.load_digits() if dataset == "digits" else data.load_mnist()
    return data.train_test_split(source, test_fraction=TEST_FRACTION, seed=seed)


def _client_parts(
    labels: np.ndarray,
    *,
    partition: str,
    clients: int,
    seed: int,
    alpha: float | None,
    per_client: int,
) -> tuple[np.ndarray, ...]:
    from jobs.federated import partitions

    if partition == "iid":
        split = partitions.iid_partition(len(labels), clients=clients, seed=seed)
    elif partition == "dirichlet":
        split = partitions.dirichlet_partition(
            labels, clients=clients, alpha=alpha or 1.0, seed=seed
        )
    else:
        split = partitions.shard_partition(
            labels, clients=clients, shards_per_client=per_client, seed=seed
        )
    return split.clients


def partition_shards(
    *, dataset: str, partition: str, clients: int, seed: int, alpha: float | None, per_client: int
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Every client's (X f32[n, f], Y i32[n], classes) of a public partition, in client order,
    deterministic for its arguments."""
    train, _ = _split(dataset=dataset, seed=seed)
    parts = _client_parts(
        train.y, partition=partition, clients=clients, seed=seed, alpha=alpha, per_client=per_client
    )
    return [(train.x[part], train.y[part], train.classes) for part in parts]


def job_partition_shards(job: Job) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """``partition_shards`` of a job's configuration and seed."""
    config = job.fl_config
    return partition_shards(
        dataset=config.dataset,
        partition=config.partition,
        clients=config.partition_clients,
        seed=job.seed,
        alpha=config.dirichlet_alpha,
        per_client=config.shards_per_client or 2,
    )


def partition_sizes(job: Job) -> list[int]:
    """Samples per partition client (the most a client of that index may declare); computed
    once per job and cached."""
    key = f"fl:partition-sizes:{job.pk}"
    sizes = cache.get(key)
    if sizes is None:
        config = job.fl_config
        train, _ = _split(dataset=config.dataset, seed=job.seed)
        parts = _client_parts(
            train.y,
            partition=config.partition,
            clients=config.partition_clients,
            seed=job.seed,
            alpha=config.dirichlet_alpha,
            per_client=config.shards_per_client or 2,
        )
        sizes = [int(part.size) for part in parts]
        cache.set(key, sizes, SIZES_CACHE_SECONDS)
    return list(sizes)


def held_out_set(job: Job) -> tuple[np.ndarray, np.ndarray]:
    """The job's held-out split: X (u8 pixels when the data set has them, else f32) [n, f] and
    Y i32[n]; never sent to a worker."""
    _, test = _split(dataset=job.fl_config.dataset, seed=job.seed)
    return test.kernel_x(), test.y
