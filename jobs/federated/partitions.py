"""Partitions of a public data set across simulated clients: IID, Dirichlet(α), k shards.

These are for demos and simulations on public data (``Partition.public`` is always True and
the platform shows it as "public data, not private"); contributors' own data never passes
through here. Every scheme is deterministic for a seed and returns index arrays into the
data set, so a partition costs a few kilobytes to store or serve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

MAX_DIRICHLET_ATTEMPTS = 1000


@dataclass(frozen=True, eq=False)
class Partition:
    """Client k holds the samples ``clients[k]`` (int64 index arrays into the data set)."""

    scheme: str
    seed: int
    clients: tuple[np.ndarray, ...]
    parameters: dict[str, float]
    public: bool = True  # public data, never a contributor's private data

    def __len__(self) -> int:
        return len(self.clients)

    def sizes(self) -> np.ndarray:
        """Samples per client: int64 [clients]."""
        return np.array([part.size for part in self.clients], dtype=np.int64)

    def histogram(self, labels: np.ndarray, classes: int) -> np.ndarray:
        """Label counts per client: int64 [clients, classes]."""
        return np.stack([np.bincount(labels[part], minlength=classes) for part in self.clients])

    def to_json(self) -> str:
        """The partition as JSON (scheme, seed, parameters, index lists, public flag)."""
        return json.dumps(
            {
                "scheme": self.scheme,
                "seed": self.seed,
                "parameters": self.parameters,
                "public": self.public,
                "clients": [part.tolist() for part in self.clients],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Partition:
        """Rebuild a partition from ``to_json``."""
        data = json.loads(text)
        return cls(
            scheme=data["scheme"],
            seed=int(data["seed"]),
            parameters=dict(data["parameters"]),
            public=bool(data["public"]),
            clients=tuple(np.asarray(part, dtype=np.int64) for part in data["clients"]),
        )


def _check_clients(n_samples: int, clients: int) -> None:
    if clients < 1:
        raise ValueError("clients must be at least 1")
    if n_samples < clients:
        raise ValueError(f"{n_samples} samples cannot give each of {clients} clients one")


def iid_partition(n_samples: int, *, clients: int, seed: int) -> Partition:
    """Shuffle, then deal equal parts (sizes differ by at most one)."""
    _check_clients(n_samples, clients)
    order = np.random.default_rng([seed, 1]).permutation(n_samples)
    parts = tuple(np.sort(part) for part in np.array_split(order, clients))
    return Partition("iid", seed, parts, {})


def dirichlet_partition(
    labels: np.ndarray, *, clients: int, alpha: float, seed: int, min_samples: int = 1
) -> Partition:
    """Label skew (Hsu et al. 2019): each class is split across clients by p ~ Dir(α·1).

    Small α gives each client few classes, large α approaches IID. Draws are repeated (from
    the same seeded stream) until every client holds at least ``min_samples``.
    """
    _check_clients(labels.shape[0], clients)
    if not alpha > 0.0:
        raise ValueError("alpha must be positive")
    rng = np.random.default_rng([seed, 2])
    classes = int(labels.max()) + 1 if labels.size else 0
    by_class = [np.flatnonzero(labels == label) for label in range(classes)]
    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        assigned: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for members in by_class:
            shuffled = members[rng.permutation(members.size)]
            proportions = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * members.size).astype(np.int64)
            for client, part in enumerate(np.split(shuffled, cuts)):
                assigned[client].append(part)
        parts = tuple(np.sort(np.concatenate(chunks)) for chunks in assigned)
        if min(part.size for part in parts) >= min_samples:
            return Partition("dirichlet", seed, parts, {"alpha": alpha})
    raise ValueError(f"no Dirichlet({alpha}) draw gave every client {min_samples} samples")


def shard_partition(
    labels: np.ndarray, *, clients: int, shards_per_client: int = 2, seed: int
) -> Partition:
    """McMahan et al. 2017's pathological non-IID split: sort by label, cut into
    ``clients · shards_per_client`` equal shards, give each client ``shards_per_client`` random
    shards (so most clients see at most that many digits)."""
    _check_clients(labels.shape[0], clients * shards_per_client)
    order = np.argsort(labels, kind="stable")  # by label, then by index
    shards = np.array_split(order, clients * shards_per_client)
    shuffled = np.random.default_rng([seed, 3]).permutation(len(shards))
    parts = tuple(
        np.sort(np.concatenate([shards[s] for s in shuffled[k::clients]])) for k in range(clients)
    )
    return Partition("shards", seed, parts, {"shards_per_client": shards_per_client})
