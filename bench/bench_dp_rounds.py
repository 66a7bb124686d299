#!/usr/bin/env python3
"""The accuracy cost of DP-FedAvg on digits at stated ε, central and distributed
(docs/benchmarks.md).

The rounds' own arithmetic, without Django: every client update is a real wasmtime call of our
logreg kernel (E = 1, B = 10, lr 0.1); the server folds them with ``StreamingFold`` clipped to C
with weight 1 and adds ``csprng_normal`` noise of std z·C to the sum before dividing by the
cohort, exactly as ``jobs.services.fl_rounds_dp.round_release`` does; the baseline is plain
sample-weighted FedAvg. Distributed rows: each client clips, encodes at the secure round's scale
and adds a Skellam share (os.urandom) in Z_2^32, the server decodes the sum and adds nothing
(``distributed_sum``); their ε is the Skellam accountant's (``jobs.privacy.skellam``) for the
shares all 100 clients added. Central ε is dp-accounting's (RDP, δ = 1e-5) for the rounds run, at q = 1: the
platform's volunteer accounting (a fixed-size cohort of whoever is online is not a Poisson
sample, docs/security.md).

Data: scikit-learn's digits, 80/20 stratified split (seeded), the 80 % dealt IID to 100 clients
(about 14 digits each); every round invites all 100 (the largest cohort the data allows, which
is what makes the noise on the mean, z·C / 100, affordable). C is the median update norm of
the first round, fixed. Three seeds; held-out accuracy after the last round.

Usage: python bench/bench_dp_rounds.py [--rounds 30] [--seeds 3]
Writes bench/results/dp_rounds.json and prints a markdown table.
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

from ccgsc_worker.dp import add_share  # noqa: E402
from jobs.aggregation import StreamingFold  # noqa: E402
from jobs.federated import client, data, partitions  # noqa: E402
from jobs.privacy import (  # noqa: E402
    clip_l2,
    csprng_normal,
    epsilon_spent,
    per_client_variance,
    skellam_share,
)
from jobs.privacy.skellam import distributed_scale, skellam_epsilon, skellam_release  # noqa: E402
from jobs.secagg.encoding import decode_sum, encode  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dp_rounds.json"
SIZES = (64, 10)
CLIENTS = 100
NOISE_MULTIPLIERS = (None, 0.0, 1.0, 3.0, 10.0)  # None: no DP; 0: clipping and uniform weights only
# Distributed noise at the same z: shares sized for every client (the same noise as central) and
# for 90 of 100 (dropout tolerance: each share is larger, and all 100 arrive).
DISTRIBUTED = ((3.0, 100), (3.0, 90), (10.0, 100), (10.0, 90))
DELTA = 1e-5


def train_round(kernel, weights, train, part, *, seed: int, round_number: int) -> list[Any]:
    config = client.TrainConfig(epochs=1, batch_size=10, learning_rate=0.1)
    updates = []
    for index, rows in enumerate(part.clients):
        updates.append(
            client.client_train(
                kernel,
                sizes=SIZES,
                weights=weights,
                x=train.x[rows],
                y=train.y[rows],
                config=config,
                seed=client.derive_seed(seed, round_number, index),
            )
        )
    return updates


def distributed_sum(updates, *, z: float, clip: float, shares: int) -> tuple[np.ndarray, float]:
    """The unmasked sum of a secure round with distributed noise, as the clients and the server
    compute it (the masks cancel exactly and are left out): each client clips, encodes at the
    round's scale and adds its Skellam share (os.urandom) in Z_2^32; the server decodes. Also
    the summed share variance in encoded units, for the accountant."""
    n = len(updates)
    scale = distributed_scale(n_clients=n, clip_norm=clip, noise_multiplier=z, noise_shares=shares)
    variance = per_client_variance(
        noise_multiplier=z, clip_norm=clip, scale=scale, min_survivors=shares
    )
    total = np.zeros(updates[0].update.size, dtype=np.uint32)
    for update in updates:
        clipped, _ = clip_l2(update.update, clip)
        encoded = encode(clipped, scale=scale, bound=clip)
        total += add_share(encoded, skellam_share(encoded.size, variance=variance))
    return decode_sum(total, scale=scale), scale


def run(
    kernel,
    train,
    test,
    part,
    *,
    z: float | None,
    clip: float,
    rounds: int,
    seed: int,
    shares: int | None = None,
):
    """Held-out accuracy after ``rounds``; ``shares`` set: distributed noise sized for that many
    survivors (every client survives), else the server's Gaussian noise."""
    weights = client.initial_weights("dense", SIZES, seed=seed)
    for number in range(1, rounds + 1):
        updates = train_round(kernel, weights, train, part, seed=seed, round_number=number)
        if shares is not None and z:
            total, _ = distributed_sum(updates, z=z, clip=clip, shares=shares)
            mean = (total / len(updates)).astype(np.float32)
            weights = (weights.astype(np.float64) + mean).astype(np.float32)
            continue
        fold = StreamingFold(weights.shape[0])
        for index, update in enumerate(updates):
            if z is None:
                fold.fold(str(index), update.update, float(update.samples))
            else:
                fold.fold(str(index), update.update, 1.0, clip_norm=clip)
        if z is None:
            mean = fold.finish()
        else:
            noised = fold.weighted_sum() + csprng_normal(fold.dimension, std=z * clip)
            mean = (noised / fold.count).astype(np.float32)
        weights = (weights.astype(np.float64) + mean).astype(np.float32)
    result = client.evaluate(kernel, sizes=SIZES, weights=weights, x=test.x, y=test.y)
    return result.accuracy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    kernel = client.load_training_kernel("logreg")
    train, test = data.train_test_split(data.load_digits(), seed=0)
    part = partitions.iid_partition(len(train), clients=CLIENTS, seed=0)
    first = train_round(kernel, client.initial_weights("dense", SIZES, seed=0), train, part,
                        seed=0, round_number=1)  # fmt: skip
    clip = float(np.median([np.linalg.norm(u.update.astype(np.float64)) for u in first]))
    rows = []
    started = time.perf_counter()
    for z in NOISE_MULTIPLIERS:
        accuracies = [
            run(kernel, train, test, part, z=z, clip=clip, rounds=args.rounds, seed=seed)
            for seed in range(args.seeds)
        ]
        epsilon = (
            epsilon_spent(noise_multiplier=z, sampling_probability=1.0, rounds=args.rounds,
                          delta=DELTA)
            if z else None
        )  # fmt: skip
        rows.append(
            {
                "noise_multiplier": z,
                "epsilon": epsilon,
                "noise_std_on_mean": None if z is None else z * clip / CLIENTS,
                "accuracy_mean": float(np.mean(accuracies)),
                "accuracy_min": float(np.min(accuracies)),
                "accuracy_max": float(np.max(accuracies)),
            }
        )
        print(rows[-1], file=sys.stderr)
    dimension = first[0].update.size
    for z, shares in DISTRIBUTED:
        accuracies = [
            run(kernel, train, test, part, z=z, clip=clip, rounds=args.rounds, seed=seed,
                shares=shares)
            for seed in range(args.seeds)
        ]  # fmt: skip
        scale = distributed_scale(
            n_clients=CLIENTS, clip_norm=clip, noise_multiplier=z, noise_shares=shares
        )
        summed = CLIENTS * per_client_variance(
            noise_multiplier=z, clip_norm=clip, scale=scale, min_survivors=shares
        )
        release = skellam_release(clip_norm=clip, scale=scale, dimension=dimension, variance=summed)
        rows.append(
            {
                "noise_multiplier": z,
                "shares": shares,
                "epsilon": skellam_epsilon([(release, args.rounds)], delta=DELTA),
                "noise_std_on_mean": summed**0.5 / scale / CLIENTS,
                "accuracy_mean": float(np.mean(accuracies)),
                "accuracy_min": float(np.min(accuracies)),
                "accuracy_max": float(np.max(accuracies)),
            }
        )
        print(rows[-1], file=sys.stderr)
    report = {
        "rounds": args.rounds,
        "seeds": args.seeds,
        "clients_per_round": CLIENTS,
        "clip_norm": clip,
        "delta": DELTA,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"C = {clip:.4f} (median first-round norm), {args.rounds} rounds of {CLIENTS} clients")
    print("| setting | z | ε (δ = 1e-5, q = 1) | noise std on the mean | held-out accuracy |")
    print("|---|---|---|---|---|")
    for row in rows:
        z = row["noise_multiplier"]
        name = "FedAvg" if z is None else ("clip only" if z == 0 else "DP-FedAvg, central")
        if row.get("shares"):
            name = f"DP-FedAvg, distributed (Skellam, sized for {row['shares']})"
        eps = "—" if row["epsilon"] is None else (f"{row['epsilon']:.2f}")
        if z == 0:
            eps = "∞"
        std = "—" if row["noise_std_on_mean"] is None else f"{row['noise_std_on_mean']:.4f}"
        accuracy = (
            f"{row['accuracy_mean']:.3f} ({row['accuracy_min']:.3f}–{row['accuracy_max']:.3f})"
        )
        print(f"| {name} | {'—' if z is None else z} | {eps} | {std} | {accuracy} |")


if __name__ == "__main__":
    main()
