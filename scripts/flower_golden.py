#!/usr/bin/env python3
"""Generate golden vectors from Flower's own aggregation code into tests/aggregation/golden/.

Runs in the separate Flower virtualenv (never the project's), pinned by
bench/requirements-flower.txt:

    python3.12 -m venv var/flower-venv
    var/flower-venv/bin/pip install -r bench/requirements-flower.txt
    var/flower-venv/bin/python scripts/flower_golden.py

Each .npz holds the random inputs (seeded, small) and Flower's outputs, flattened to one
float vector per model (Flower works on lists of layers: two layers, shapes (4, 5) and (30,),
d = 50). tests/aggregation/test_flower_golden.py feeds the same inputs to jobs.aggregation.
This script imports nothing from the project.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "aggregation" / "golden"
SHAPES = [(4, 5), (30,)]
DIMENSION = sum(int(np.prod(shape)) for shape in SHAPES)


def to_layers(flat: np.ndarray) -> list[np.ndarray]:
    layers, start = [], 0
    for shape in SHAPES:
        size = int(np.prod(shape))
        layers.append(flat[start : start + size].reshape(shape).copy())
        start += size
    return layers


def to_flat(layers: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(layer).ravel() for layer in layers])


def clients(rng: np.random.Generator, n: int, center: np.ndarray | None = None) -> np.ndarray:
    base = np.zeros(DIMENSION, np.float32) if center is None else center
    bias = rng.normal(0.0, 0.05, DIMENSION)
    return (base + bias + rng.normal(0.0, 0.1, (n, DIMENSION))).astype(np.float32)


def examples(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(5, 200, n).astype(np.int64)


def save(name: str, **arrays: np.ndarray | float | int) -> None:
    np.savez_compressed(GOLDEN / f"{name}.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    print(f"wrote {name}.npz")


def legacy_functions(rng: np.random.Generator) -> None:
    """flwr.server.strategy.aggregate: aggregate, median, trimmed mean, Krum, Multi-Krum."""
    from flwr.server.strategy.aggregate import (
        aggregate,
        aggregate_krum,
        aggregate_median,
        aggregate_trimmed_avg,
    )

    for name, n in (("fedavg", 7), ("median_odd", 9), ("median_even", 10)):
        updates, counts = clients(rng, n), examples(rng, n)
        results = [(to_layers(u), int(c)) for u, c in zip(updates, counts, strict=True)]
        function = aggregate if name == "fedavg" else aggregate_median
        save(name, updates=updates, num_examples=counts, expected=to_flat(function(results)))

    updates, counts = clients(rng, 10), examples(rng, 10)
    results = [(to_layers(u), int(c)) for u, c in zip(updates, counts, strict=True)]
    for beta in (0.1, 0.2, 0.3):
        expected = to_flat(aggregate_trimmed_avg(results, proportiontocut=beta))
        save(f"trimmed_mean_{int(beta * 10)}", updates=updates, beta=beta, expected=expected)

    # Two obvious attackers far from the honest cluster: Krum must pick an honest update.
    updates, counts = clients(rng, 12), examples(rng, 12)
    updates[3] += 5.0
    updates[8] -= 4.0
    results = [(to_layers(u), int(c)) for u, c in zip(updates, counts, strict=True)]
    krum = to_flat(aggregate_krum(results, num_malicious=2, to_keep=0))
    multi = to_flat(aggregate_krum(results, num_malicious=2, to_keep=4))
    save("krum", updates=updates, num_examples=counts, byzantine=2, expected=krum)
    save("multikrum", updates=updates, num_examples=counts, byzantine=2, selected=4, expected=multi)


def aggregate_arrayrecords_golden(rng: np.random.Generator) -> None:
    """flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords (Flower's current FedAvg)."""
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    updates, counts = clients(rng, 8), examples(rng, 8)
    records = [
        RecordDict(
            {"arrays": ArrayRecord(to_layers(u)), "metrics": MetricRecord({"num-examples": int(c)})}
        )
        for u, c in zip(updates, counts, strict=True)
    ]
    expected = to_flat(aggregate_arrayrecords(records, "num-examples").to_numpy_ndarrays())
    save("aggregate_arrayrecords", updates=updates, num_examples=counts, expected=expected)


def _fit_results(round_clients: np.ndarray, counts: np.ndarray) -> list:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    return [
        (
            None,  # the client proxy: unused by aggregation
            FitRes(
                status=Status(code=Code.OK, message=""),
                parameters=ndarrays_to_parameters(to_layers(u)),
                num_examples=int(c),
                metrics={},
            ),
        )
        for u, c in zip(round_clients, counts, strict=True)
    ]


def server_optimisers(rng: np.random.Generator, rounds: int = 3, n: int = 6) -> None:
    """FedAvgM, FedAdam, FedYogi, FedAdagrad (flwr.server.strategy) over several rounds."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi

    cases = {
        "fedavgm": (FedAvgM, {"server_learning_rate": 0.7, "server_momentum": 0.9}),
        "fedadam": (FedAdam, {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
        "fedyogi": (FedYogi, {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
        "fedadagrad": (FedAdagrad, {"eta": 0.1, "tau": 1e-3}),
    }
    for name, (strategy_class, parameters) in cases.items():
        initial = rng.normal(0.0, 0.5, DIMENSION).astype(np.float32)
        strategy = strategy_class(
            initial_parameters=ndarrays_to_parameters(to_layers(initial)), **parameters
        )
        current = initial
        all_clients, all_counts, expected = [], [], []
        for server_round in range(1, rounds + 1):
            round_clients, counts = clients(rng, n, current), examples(rng, n)
            aggregated, _ = strategy.aggregate_fit(
                server_round, _fit_results(round_clients, counts), []
            )
            current = to_flat(parameters_to_ndarrays(aggregated)).astype(np.float32)
            all_clients.append(round_clients)
            all_counts.append(counts)
            expected.append(current)
        save(
            name,
            initial=initial,
            clients=np.stack(all_clients),
            num_examples=np.stack(all_counts),
            expected=np.stack(expected),
            **parameters,
        )


def _set_task_identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    # Messages stamp the run and node they are created in; outside a ServerApp, set them.
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 1


def serverapp_optimisers(rng: np.random.Generator, rounds: int = 3, n: int = 6) -> None:
    """The same four optimisers in Flower's current API (flwr.serverapp.strategy), their own
    defaults except the momentum, driven as a ServerApp would: each round's output becomes the
    next round's current arrays (what ``configure_train`` does)."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi

    _set_task_identity()
    keys = ["layer0", "layer1"]

    def record(flat: np.ndarray) -> ArrayRecord:
        return ArrayRecord({k: Array(v) for k, v in zip(keys, to_layers(flat), strict=True)})

    cases = {
        "serverapp_fedavgm": (FedAvgM, {"server_learning_rate": 0.7, "server_momentum": 0.9}),
        "serverapp_fedadam": (FedAdam, {}),
        "serverapp_fedyogi": (FedYogi, {}),
        "serverapp_fedadagrad": (FedAdagrad, {}),
    }
    for name, (strategy_class, parameters) in cases.items():
        strategy = strategy_class(**parameters)
        initial = rng.normal(0.0, 0.5, DIMENSION).astype(np.float32)
        current = initial
        all_clients, all_counts, expected = [], [], []
        for server_round in range(1, rounds + 1):
            if isinstance(strategy, FedAvgM):
                if strategy.current_arrays is None:
                    strategy.current_arrays = record(current)
            else:
                strategy.current_arrays = dict(zip(keys, to_layers(current), strict=True))
            round_clients, counts = clients(rng, n, current), examples(rng, n)
            messages = [
                Message(
                    content=RecordDict(
                        {
                            "arrays": record(u),
                            "metrics": MetricRecord({"num-examples": int(c)}),
                        }
                    ),
                    dst_node_id=k + 1,
                    message_type="train",
                )
                for k, (u, c) in enumerate(zip(round_clients, counts, strict=True))
            ]
            aggregated, _ = strategy.aggregate_train(server_round, messages)
            current = to_flat(aggregated.to_numpy_ndarrays()).astype(np.float32)
            all_clients.append(round_clients)
            all_counts.append(counts)
            expected.append(current)
        hyperparameters = {
            attribute: getattr(strategy, attribute)
            for attribute in ("eta", "beta_1", "beta_2", "tau")
            if hasattr(strategy, attribute)
        }
        save(
            name,
            initial=initial,
            clients=np.stack(all_clients),
            num_examples=np.stack(all_counts),
            expected=np.stack(expected),
            **parameters,
            **hyperparameters,
        )


def qfedavg(rng: np.random.Generator, n: int = 6) -> None:
    """q-FedAvg, flwr.serverapp.strategy.QFedAvg.aggregate_train (per-client train loss)."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import QFedAvg

    _set_task_identity()
    weights = rng.normal(0.0, 0.5, DIMENSION).astype(np.float32)
    updates = clients(rng, n, weights)
    losses = rng.uniform(0.2, 2.5, n)
    counts = examples(rng, n)
    for q in (0.0, 0.2, 1.0):
        messages = [
            Message(
                content=RecordDict(
                    {
                        "arrays": ArrayRecord(to_layers(u)),
                        "metrics": MetricRecord(
                            {"train_loss": float(loss), "num-examples": int(c)}
                        ),
                    }
                ),
                dst_node_id=k + 1,
                message_type="train",
            )
            for k, (u, loss, c) in enumerate(zip(updates, losses, counts, strict=True))
        ]
        strategy = QFedAvg(client_learning_rate=0.1, q=q)
        strategy.current_arrays = ArrayRecord(to_layers(weights))
        aggregated, _ = strategy.aggregate_train(1, messages)
        save(
            f"qfedavg_q{int(q * 10)}",
            weights=weights,
            updates=updates,
            losses=losses,
            q=q,
            client_learning_rate=0.1,
            expected=to_flat(aggregated.to_numpy_ndarrays()),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args(argv)
    import flwr

    logging.getLogger("flwr").setLevel(logging.ERROR)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    legacy_functions(rng)
    aggregate_arrayrecords_golden(rng)
    server_optimisers(rng)
    qfedavg(rng)
    serverapp_optimisers(rng)
    (GOLDEN / "VERSION").write_text(f"flwr {flwr.__version__}\nseed {args.seed}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
