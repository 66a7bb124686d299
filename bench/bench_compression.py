#!/usr/bin/env python3
"""Compressed uploads: bytes per round and held-out accuracy per scheme (docs/benchmarks.md).

Bytes: one client's upload (the 32-byte metrics header, then the payload) under each scheme,
from the payload layouts clients write (``ccgsc_worker.compression``), at the 2NN's d
(784-200-200-10: 199,210) and at the demo's 2NN on 8×8 digits (64-200-200-10: 55,210), against
dense float32; a round uploads that times its reports.

Accuracy: the rounds' own arithmetic without Django. Every client update is a real wasmtime call
of our mlp kernel (the demo 2NN on digits, E = 1, B = 10, lr 0.05); each client encodes it as
the edge worker does (int8 from its invite's seed, top-k over update + its own residual, kept
across rounds, signs) and the server decodes and folds as ``fl_rounds_compression`` does:
int8 and top-k into the sample-weighted ``StreamingFold`` then FedAvg's step, signSGD into a
``SignVote`` then w + η·sign. scikit-learn's digits, 80/20 stratified split, 100 clients (IID,
and 2 label shards each), 10 clients a round; the same cohorts for every scheme.

Usage: python bench/bench_compression.py [--rounds 30] [--seeds 2]
Writes bench/results/compression.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "edge_worker"), str(ROOT)]

from ccgsc_worker.compression import (  # noqa: E402
    ResidualStore,
    encoded_bytes,
    int8_payload,
    sign_payload,
    topk_count,
)
from jobs.aggregation import (  # noqa: E402
    SignVote,
    SparseUpdate,
    StreamingFold,
    int8_decode,
)
from jobs.federated import client, data, partitions  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "compression.json"
SIZES = (64, 200, 200, 10)
CLIENTS = 100
COHORT = 10
TOPK_FRACTIONS = (0.1, 0.01)
SIGN_STEPS = (0.001, 0.003, 0.01)
METRICS_BYTES = 32


def parameters(sizes: tuple[int, ...]) -> int:
    return sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))


def upload_bytes(d: int) -> list[dict[str, Any]]:
    """One client's upload per scheme at dimension d."""
    dense = METRICS_BYTES + 4 * d
    rows = [{"scheme": "none (float32)", "bytes": dense}]
    rows.append({"scheme": "int8", "bytes": METRICS_BYTES + encoded_bytes("int8", d)})
    for fraction in TOPK_FRACTIONS:
        k = topk_count(d, fraction)
        rows.append(
            {
                "scheme": f"top-k {fraction:g}",
                "bytes": METRICS_BYTES + encoded_bytes("topk", d, k=k),
            }
        )
    rows.append({"scheme": "signSGD", "bytes": METRICS_BYTES + encoded_bytes("signsgd", d)})
    for row in rows:
        row["ratio"] = row["bytes"] / dense
    return rows


def run(kernel, train, test, part, *, scheme: str, option: float, rounds: int, seed: int) -> float:
    """Held-out accuracy after ``rounds`` rounds of ``scheme`` (option: top-k's fraction or
    signSGD's η)."""
    weights = client.initial_weights("dense", SIZES, seed=seed)
    d = weights.shape[0]
    residuals = ResidualStore()  # keyed by client: each keeps its own
    config = client.TrainConfig(epochs=1, batch_size=10, learning_rate=0.05)
    rng = np.random.default_rng(seed)
    for number in range(1, rounds + 1):
        cohort = sorted(rng.choice(len(part.clients), size=COHORT, replace=False).tolist())
        fold: Any = SignVote(d) if scheme == "signsgd" else StreamingFold(d)
        for index in cohort:
            rows = part.clients[index]
            update = client.client_train(
                kernel,
                sizes=SIZES,
                weights=weights,
                x=train.x[rows],
                y=train.y[rows],
                config=config,
                seed=client.derive_seed(seed, number, index),
            )
            vector, weight = update.update.astype(np.float32), float(update.samples)
            if scheme == "none":
                fold.fold(str(index), vector, weight)
            elif scheme == "int8":
                payload = int8_payload(vector, seed=client.derive_seed(seed, number, index, 8))
                fold.fold(str(index), int8_decode(payload), weight)
            elif scheme == "topk":
                payload = residuals.compress(str(index), vector, k=topk_count(d, option))
                residuals.commit(str(index))
                sparse = SparseUpdate.decode(payload)
                fold.fold_sparse(str(index), sparse.indices, np.array(sparse.values), weight)
            else:
                fold.fold(str(index), sign_payload(vector))
        if scheme == "signsgd":
            step = option * fold.finish().astype(np.float64)
        else:
            step = fold.finish().astype(np.float64)
        weights = (weights.astype(np.float64) + step).astype(np.float32)
    return client.evaluate(kernel, sizes=SIZES, weights=weights, x=test.x, y=test.y).accuracy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    sizes = {
        "2NN 784-200-200-10": parameters((784, 200, 200, 10)),
        "2NN on digits": parameters(SIZES),
    }
    bytes_rows = {name: upload_bytes(d) for name, d in sizes.items()}
    kernel = client.load_training_kernel("mlp")
    train, test = data.train_test_split(data.load_digits(), seed=0)
    splits = {
        "iid": partitions.iid_partition(len(train), clients=CLIENTS, seed=0),
        "2 shards": partitions.shard_partition(
            train.y, clients=CLIENTS, shards_per_client=2, seed=0
        ),
    }
    settings = [("none", 0.0), ("int8", 0.0)]
    settings += [("topk", fraction) for fraction in TOPK_FRACTIONS]
    settings += [("signsgd", step) for step in SIGN_STEPS]
    accuracy_rows = []
    for scheme, option in settings:
        row: dict[str, Any] = {"scheme": scheme, "option": option}
        for split, part in splits.items():
            scores = [
                run(kernel, train, test, part, scheme=scheme, option=option, rounds=args.rounds,
                    seed=seed)
                for seed in range(args.seeds)
            ]  # fmt: skip
            row[split] = {"mean": float(np.mean(scores)), "min": float(np.min(scores)),
                          "max": float(np.max(scores))}  # fmt: skip
        accuracy_rows.append(row)
        print(row, file=sys.stderr)
    report = {
        "rounds": args.rounds,
        "seeds": args.seeds,
        "clients": CLIENTS,
        "cohort": COHORT,
        "upload_bytes": bytes_rows,
        "accuracy": accuracy_rows,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(
        "| scheme | "
        + " | ".join(f"upload, {name} (d = {d:,})" for name, d in sizes.items())
        + " |"
    )
    print("|---|" + "---|" * len(sizes))
    for index, row in enumerate(next(iter(bytes_rows.values()))):
        cells = [
            f"{bytes_rows[name][index]['bytes']:,} B ({bytes_rows[name][index]['ratio']:.1%})"
            for name in sizes
        ]
        print(f"| {row['scheme']} | " + " | ".join(cells) + " |")
    print()
    print(f"Held-out accuracy after {args.rounds} rounds ({COHORT} of {CLIENTS} clients a round, "
          f"{args.seeds} seeds: mean (min–max))")  # fmt: skip
    print("| scheme | IID | 2 shards per client |")
    print("|---|---|---|")
    for row in accuracy_rows:
        name = {
            "none": "none (float32)",
            "int8": "int8",
            "topk": f"top-k {row['option']:g} + error feedback",
            "signsgd": f"signSGD, η = {row['option']:g}",
        }[row["scheme"]]
        cells = [
            f"{row[split]['mean']:.3f} ({row[split]['min']:.3f}–{row[split]['max']:.3f})"
            for split in splits
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
