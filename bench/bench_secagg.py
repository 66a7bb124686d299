#!/usr/bin/env python3
"""Secure aggregation cost: our SecAgg+ (jobs/secagg) against Flower's, same n, d, k, dropout.

Client cost: share generation (Shamir + encryption of the shares), mask expansion (the masked
input with its k + 1 masks) and upload size against plain float32. Server cost: unmasking
(secret reconstruction, then removing survivors' self masks and the dropped clients' pairwise
masks), on one core and split by coordinate range over two processes.

Clients are simulated in-process. For the server measurement the protocol runs with real keys
and shares for all n clients; only the masked inputs are replaced by one random masked sum of
dimension d (unmasking cost does not depend on the values), except in the verified cells
(n = 100, d = 100k), where every client masks its real input and the result is checked against
the plain sum. Flower runs in its own virtualenv (var/flower-venv, bench/
requirements-flower.txt): this script re-runs itself there with --flower and drives
Flower's own functions (create_shares, combine_shares, generate_shared_key, pseudo_rand_gen,
quantize, parameters_*). Flower is measured on every d = 100k cell and, at d = 1M, on n = 100
and on n = 1000 at 10 % dropout (the headline cell); the other d = 1M Flower cells would take
several minutes of a shared machine each.

A second part measures the accuracy cost of DP-FedAvg on scikit-learn's digits (1,797 8×8
images, shipped with the library): softmax regression, each of the 1,347 training images one
client, each round a Poisson sample with q = 0.1 of that enrolled population, one local step,
L2 clip C, Gaussian noise z·C on the sum (central). ε comes from jobs.privacy.accounting
(dp-accounting). Distributed noise is compared with central in bench_dp_rounds.py, at q = 1 as
the rounds account it.

Usage: python bench/bench_secagg.py [--quick] [--part secagg|dp|all]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FLOWER_VENV = ROOT / "var" / "flower-venv"
FLOWER_REQUIREMENTS = ROOT / "bench" / "requirements-flower.txt"

NS = (100, 500, 1000)
DS = (100_000, 1_000_000)
DROPOUTS = (0.0, 0.1, 0.3)


def neighbour_count(n: int) -> int:
    """The same k as jobs.secagg.graph (kept here so the Flower side needs no project code)."""
    return min(2 * (n - 1).bit_length(), n - 1)


def threshold_for(k: int, dropout: float) -> int:
    """t: a strict majority of k, lowered for 30 % dropout so the round can finish."""
    return k // 2 + 1 if dropout < 0.3 else max(2, int(k * 0.4))


def flower_cell(n: int, d: int, dropout: float) -> bool:
    return d <= 100_000 or n == 100 or (n == 1000 and dropout == 0.1)


# ---------------------------------------------------------------------------------------------
# Ours (project environment)


def _ours_setup(n: int, dropout: float, seed: int):
    """Run phases 0–3 for all n clients with 1-coordinate inputs; return server and plan."""
    import numpy as np

    from jobs.secagg import RoundConfig, SecAggClient, SecAggServer

    k = neighbour_count(n)
    config = RoundConfig(
        job="bench",
        round_number=1,
        session_id=os.urandom(32),
        graph_seed=seed.to_bytes(4, "big"),
        client_ids=tuple(range(1, n + 1)),
        dimension=1,
        threshold=threshold_for(k, dropout),
    )
    clients = {i: SecAggClient(config, i) for i in config.client_ids}
    server = SecAggServer(config)
    for c in clients.values():
        server.receive_advertisement(c.advertise_keys())
    keys = server.close_advertise()
    for i, c in clients.items():
        server.receive_shares(c.share_keys(keys[i]))
    cts = server.close_share()
    dropped = set(np.random.default_rng(seed).choice(n, int(n * dropout), replace=False) + 1)
    for i, c in clients.items():
        if i not in dropped:
            server.receive_masked_input(c.masked_input(cts[i], np.zeros(1, np.uint32)))
    request = server.close_masked_input()
    for i in request["alive"]:
        server.receive_unmask(clients[i].unmask(request["alive"], request["dropped"]))
    start = time.perf_counter()
    plan = server.close_unmask()
    return config, plan, request, time.perf_counter() - start


def _unmask_piece(args):
    from jobs.secagg import unmask_range

    plan, piece, start, stop = args
    return unmask_range(plan, piece, start=start, stop=stop)


def _warm(_: int) -> bool:
    import jobs.secagg  # noqa: F401

    return True


def ours_client(n: int, d: int) -> dict:
    """One client's share generation, masked input (k + 1 masks of d) and upload bytes."""
    import numpy as np

    from jobs.secagg import RoundConfig, SecAggClient

    k = neighbour_count(n)
    ids = tuple(range(1, n + 1))
    config = RoundConfig(
        job="bench",
        round_number=1,
        session_id=os.urandom(32),
        graph_seed=b"client",
        client_ids=ids,
        dimension=d,
        threshold=k // 2 + 1,
    )
    graph = config.graph()
    me = 1
    members = sorted(graph[me] | {me} | {j for i in graph[me] for j in graph[i]})
    clients = {i: SecAggClient(config, i) for i in members}
    adverts = {i: c.advertise_keys() for i, c in clients.items()}
    public = {i: {x: adverts[i][x] for x in ("cipher_public", "mask_public")} for i in adverts}
    start = time.perf_counter()
    shared = clients[me].share_keys({j: public[j] for j in graph[me]})
    share_s = time.perf_counter() - start
    incoming = {}
    for j in graph[me]:
        msg = clients[j].share_keys({i: public[i] for i in graph[j] if i in public})
        incoming[j] = msg["ciphertexts"][me]
    update = np.random.default_rng(0).integers(0, 2**32, d, dtype=np.uint32)
    start = time.perf_counter()
    masked = clients[me].masked_input(incoming, update)
    mask_s = time.perf_counter() - start
    unmask = clients[me].unmask(list(graph[me] | {me}), [])
    upload = (
        64
        + sum(len(c) for c in shared["ciphertexts"].values())
        + masked["masked"].nbytes
        + sum(len(s) for s in unmask["shares"].values())
    )
    return {
        "share_ms": share_s * 1000,
        "mask_ms": mask_s * 1000,
        "upload_bytes": upload,
        "upload_ratio": upload / (4 * d),
    }


def ours_server(light_plan, reconstruct_s: float, request: dict, d: int, pool) -> dict:
    """Reconstruction (timed at setup) + mask removal over d coordinates, one process and two."""
    import dataclasses

    import numpy as np

    from jobs.secagg import unmask_range

    plan = dataclasses.replace(light_plan, dimension=d)
    masked_sum = np.random.default_rng(1).integers(0, 2**32, d, dtype=np.uint32)
    start = time.perf_counter()
    unmask_range(plan, masked_sum)
    one_core_s = time.perf_counter() - start
    half = d // 2
    start = time.perf_counter()
    pieces = list(
        pool.map(
            _unmask_piece,
            [(plan, masked_sum[:half], 0, half), (plan, masked_sum[half:], half, d)],
        )
    )
    two_core_s = time.perf_counter() - start
    np.concatenate(pieces)
    return {
        "reconstruct_ms": reconstruct_s * 1000,
        "masks_removed": len(plan.self_mask_keys) + len(plan.pair_masks),
        "unmask_1core_s": reconstruct_s + one_core_s,
        "unmask_2core_s": reconstruct_s + two_core_s,
        "alive": len(request["alive"]),
        "dropped": len(request["dropped"]),
    }


def ours_verify(n: int, d: int, dropout: float) -> bool:
    """A full real round at (n, d, dropout): does the aggregate equal the plain sum?"""
    import numpy as np

    from jobs.secagg import RoundConfig
    from jobs.secagg.simulate import run_round

    k = neighbour_count(n)
    config = RoundConfig(
        job="bench",
        round_number=1,
        session_id=os.urandom(32),
        graph_seed=b"verify",
        client_ids=tuple(range(1, n + 1)),
        dimension=d,
        threshold=threshold_for(k, dropout),
    )
    rng = np.random.default_rng(2)
    inputs = {i: rng.integers(0, 2**32, d, dtype=np.uint32) for i in config.client_ids}
    dropping = rng.choice(n, int(n * dropout), replace=False) + 1
    total, server = run_round(
        config, inputs, drop_before={int(i): "masked_input" for i in dropping}
    )
    expected = np.zeros(d, np.uint32)
    for i in server.alive:
        expected += inputs[i]
    return bool(np.array_equal(total, expected))


def node_mask_ms(d: int) -> float | None:
    """Milliseconds for one d-coordinate mask (expand + add) in Node's WebCrypto, or None."""
    if not shutil.which("node"):
        return None
    script = (
        "const dir = process.argv[1];"
        "const { systemRandomBytes } = await import(`${dir}/secagg-bytes.js`);"
        "const { expandMask } = await import(`${dir}/secagg-primitives.js`);"
        "const { addInPlace } = await import(`${dir}/secagg-encoding.js`);"
        f"const key = systemRandomBytes(32); const t = new Uint32Array({d});"
        f"addInPlace(t, await expandMask(key, {d}), 1);"
        "const start = performance.now();"
        f"for (let i = 0; i < 10; i++) addInPlace(t, await expandMask(key, {d}), 1);"
        "console.log((performance.now() - start) / 10);"
    )
    module_dir = (ROOT / "static/worker_frontend").as_uri()
    out = subprocess.run(
        ["node", "--input-type=module", "-e", script, module_dir],  # noqa: S607 - node on PATH
        capture_output=True,
        text=True,
        check=False,
    )
    return float(out.stdout) if out.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# DP-FedAvg accuracy on digits

DP_ROUNDS, DP_Q, DP_DELTA, DP_CLIP, DP_LEARNING_RATE = 100, 0.1, 1e-4, 2.0, 1.0


def dp_digits_accuracy(mode: str, noise_multiplier: float, seed: int) -> float:
    """Test accuracy after DP_ROUNDS rounds of (DP-)FedAvg; mode plain or central."""
    import numpy as np
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    features = np.hstack([features[order] / 16.0, np.ones((len(labels), 1))])
    labels = labels[order]
    train_x, train_y, test_x, test_y = (
        features[:1347],
        labels[:1347],
        features[1347:],
        labels[1347:],
    )
    weights = np.zeros((65, 10))
    population = len(train_y)
    for _ in range(DP_ROUNDS):
        cohort = np.flatnonzero(rng.random(population) < DP_Q)
        logits = train_x[cohort] @ weights
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        probabilities[np.arange(cohort.size), train_y[cohort]] -= 1
        deltas = -DP_LEARNING_RATE * np.einsum("ni,nj->nij", train_x[cohort], probabilities)
        deltas = deltas.reshape(cohort.size, -1)
        if mode == "plain":
            weights += deltas.sum(axis=0).reshape(65, 10) / cohort.size
            continue
        norms = np.linalg.norm(deltas, axis=1)
        deltas *= np.minimum(1.0, DP_CLIP / np.maximum(norms, 1e-12))[:, None]
        total = deltas.sum(axis=0) + rng.normal(0, noise_multiplier * DP_CLIP, deltas.shape[1])
        weights += total.reshape(65, 10) / (DP_Q * population)
    return float(((test_x @ weights).argmax(axis=1) == test_y).mean())


def dp_epsilon(noise_multiplier: float) -> dict:
    """ε (RDP and PLD) for the digits runs."""
    from jobs.privacy import epsilon_spent

    return {
        accountant: epsilon_spent(
            noise_multiplier=noise_multiplier,
            sampling_probability=DP_Q,
            rounds=DP_ROUNDS,
            delta=DP_DELTA,
            accountant=accountant,
        )
        for accountant in ("rdp", "pld")
    }


def dp_part(seeds: int) -> list[dict]:
    rows = []
    # Distributed noise is compared with central at q = 1, as the rounds account it, in
    # bench_dp_rounds.py: its Skellam accountant claims no amplification by subsampling.
    for mode, z in (("plain", 0.0), ("central", 1.0), ("central", 1.5)):
        accuracies = [dp_digits_accuracy(mode, z, seed) for seed in range(seeds)]
        rows.append(
            {
                "mode": mode,
                "noise_multiplier": z,
                "accuracy_mean": sum(accuracies) / seeds,
                "accuracies": accuracies,
                "epsilon": dp_epsilon(z) if mode != "plain" else None,
            }
        )
    return rows


def _dp_table(rows: list[dict]) -> str:
    lines = [
        f"DP-FedAvg on digits: {DP_ROUNDS} rounds, q = {DP_Q} of 1,347 one-image clients, "
        f"C = {DP_CLIP}, δ = {DP_DELTA:g}, test accuracy mean of {len(rows[0]['accuracies'])} "
        "seeds\n",
        "| mechanism | z | ε (RDP / PLD) | test accuracy |",
        "|---|---|---|---|",
    ]
    for r in rows:
        eps = r["epsilon"]
        eps_text = (
            f"{eps['rdp']:.2f} / {eps['pld']:.2f}"
            if eps
            else ("∞" if not r["noise_multiplier"] else "n/a")
        )
        lines.append(
            f"| {r['mode']} | {r['noise_multiplier']:g} | {eps_text} | {r['accuracy_mean']:.1%} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Flower (its own virtualenv; this part imports only flwr, numpy and the standard library)


def flower_measure(n: int, d: int, dropout: float, seed: int) -> dict:
    """Flower's SecAgg+ math at the same n, d, k, t: one client's cost and the server unmask."""
    import numpy as np
    from flwr.common import ndarray_to_bytes
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
        encrypt,
        generate_shared_key,
    )
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import (
        pseudo_rand_gen,
        share_keys_plaintext_concat,
    )
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )

    k = neighbour_count(n)
    t = threshold_for(k, dropout)
    num_shares = k + 1  # Flower counts the client itself among the share holders
    mod_range, target_range = 2**32, 2**22
    keys = []
    for _ in range(n):
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        keys.append(
            (
                private_key_to_bytes(sk1),
                public_key_to_bytes(pk1),
                private_key_to_bytes(sk2),
                public_key_to_bytes(pk2),
            )
        )
    # Client 0: share keys, then the masked input with k + 1 masks.
    sk1, pk1, sk2, pk2 = keys[0]
    peers = list(range(1, k + 1))
    start = time.perf_counter()
    rd_seed = os.urandom(32)
    b_shares = create_shares(rd_seed, t, num_shares)
    sk1_shares = create_shares(sk1, t, num_shares)
    ciphertexts = []
    for idx, peer in enumerate(peers, start=1):
        shared = generate_shared_key(bytes_to_private_key(sk2), bytes_to_public_key(keys[peer][3]))
        plaintext = share_keys_plaintext_concat(0, peer, b_shares[idx], sk1_shares[idx])
        ciphertexts.append(encrypt(shared, plaintext))
    share_s = time.perf_counter() - start
    params = [np.random.default_rng(0).uniform(-1, 1, d).astype(np.float32)]
    start = time.perf_counter()
    quantized = factor_combine(target_range, quantize(params, 8.0, target_range))
    shapes = [a.shape for a in quantized]
    quantized = parameters_addition(quantized, pseudo_rand_gen(rd_seed, mod_range, shapes))
    for peer in peers:
        shared = generate_shared_key(bytes_to_private_key(sk1), bytes_to_public_key(keys[peer][1]))
        mask = pseudo_rand_gen(shared, mod_range, shapes)
        # Flower's rule: add when the own id (0 here) is the larger one
        quantized = (parameters_addition if peer < 0 else parameters_subtraction)(quantized, mask)
    quantized = parameters_mod(quantized, mod_range)
    mask_s = time.perf_counter() - start
    upload = (
        len(pk1)
        + len(pk2)
        + sum(len(c) for c in ciphertexts)
        + sum(len(ndarray_to_bytes(a)) for a in quantized)
        + k * len(b_shares[0])
    )
    # Server: reconstruct every secret from t shares, then remove the masks as Flower's
    # unmask stage does. Shares come from a pool of 8 sharings reused across clients: the
    # reconstruction cost is the same for any secret, and it keeps the setup short.
    rng = np.random.default_rng(seed)
    dead = set((rng.choice(n, int(n * dropout), replace=False)).tolist())
    pool_seeds = [create_shares(os.urandom(32), t, num_shares) for _ in range(8)]
    pool_sk1 = [create_shares(keys[i][0], t, num_shares) for i in range(8)]
    masked = [
        np.array([target_range * (n - len(dead))], dtype=np.int64),
        rng.integers(0, 2**32, d, dtype=np.int64),
    ]
    shapes = [a.shape for a in masked]
    half = k // 2
    start = time.perf_counter()
    for nid in range(n):
        if nid not in dead:
            secret = combine_shares(pool_seeds[nid % 8][:t])
            masked = parameters_subtraction(masked, pseudo_rand_gen(secret, mod_range, shapes))
        else:
            secret = combine_shares(pool_sk1[nid % 8][:t])
            neighbours = [(nid + off) % n for off in range(-half, half + 1) if off]
            for neighbour in neighbours:
                shared = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(keys[neighbour][1])
                )
                mask = pseudo_rand_gen(shared, mod_range, shapes)
                masked = (parameters_addition if nid > neighbour else parameters_subtraction)(
                    masked, mask
                )
    parameters_mod(masked, mod_range)
    unmask_s = time.perf_counter() - start
    return {
        "share_ms": share_s * 1000,
        "mask_ms": mask_s * 1000,
        "upload_bytes": upload,
        "upload_ratio": upload / (4 * d),
        "unmask_s": unmask_s,
    }


def flower_main(cells: list[list]) -> None:
    print(json.dumps([flower_measure(n, d, dropout, 7) for n, d, dropout in cells]))


def ensure_flower_venv() -> Path | None:
    """var/flower-venv's python, created from bench/requirements-flower.txt if absent."""
    python = FLOWER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(FLOWER_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "-r", str(FLOWER_REQUIREMENTS)]
        if subprocess.run(pip, check=False).returncode != 0:
            return None
    return python


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 100, d = 100k only")
    parser.add_argument("--part", choices=("secagg", "dp", "all"), default="all")
    parser.add_argument("--flower", help=argparse.SUPPRESS)  # JSON cells: run inside Flower's venv
    args = parser.parse_args(argv)
    if args.flower:
        flower_main(json.loads(args.flower))
        return 0

    sys.path.insert(0, str(ROOT))
    report: dict = {"cpu": _cpu(), "cores": os.cpu_count()}
    if args.part in ("dp", "all"):
        report["dp"] = dp_part(seeds=1 if args.quick else 3)
        print(_dp_table(report["dp"]) + "\n")
    if args.part in ("secagg", "all"):
        report.update(secagg_part(args.quick))
        print(_table(report))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "secagg.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def secagg_part(quick: bool) -> dict:
    """Every (n, d, dropout) cell, ours and (where sampled) Flower's."""
    from concurrent.futures import ProcessPoolExecutor

    ns, ds = ((100,), (100_000,)) if quick else (NS, DS)
    cells = [(n, d, p) for n in ns for p in DROPOUTS for d in ds]
    flower_python = ensure_flower_venv()
    flower: dict[tuple, dict] = {}
    flower_cells = [c for c in cells if flower_cell(*c)]
    if flower_python:
        out = subprocess.run(
            [str(flower_python), __file__, "--flower", json.dumps(flower_cells)],
            capture_output=True,
            text=True,
            check=True,
        )
        flower = dict(zip(flower_cells, json.loads(out.stdout), strict=True))
    rows = []
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_warm, [1, 2]))  # workers start and import before timing, as warm ones would
        for n in ns:
            for dropout in DROPOUTS:
                config, plan, request, reconstruct_s = _ours_setup(n, dropout, 7)
                for d in ds:
                    row = {"n": n, "d": d, "dropout": dropout, "k": config.k}
                    row["t"] = config.threshold
                    row["ours_client"] = ours_client(n, d)
                    row["ours_server"] = ours_server(plan, reconstruct_s, request, d, pool)
                    if n == 100 and d == 100_000:
                        row["verified"] = ours_verify(n, d, dropout)
                    row["flower"] = flower.get((n, d, dropout))
                    rows.append(row)
    return {"node_mask_1m_ms": node_mask_ms(1_000_000), "rows": rows}


def _cpu() -> str | None:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _table(report: dict) -> str:
    lines = [
        f"CPU {report['cpu']}, {report['cores']} cores; WebCrypto (Node) 1M-coordinate mask: "
        f"{report['node_mask_1m_ms']:.1f} ms\n"
        if report["node_mask_1m_ms"]
        else "",
        "| n | d | drop | k | t | client share ms (ours / Flower) | client mask ms "
        "(ours / Flower) | upload × f32 (ours / Flower) | unmask s ours 1 core | "
        "ours 2 cores | Flower | × (1 core) | × (2 cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        c, s, f = r["ours_client"], r["ours_server"], r["flower"]
        flower_share = f"{f['share_ms']:.1f}" if f else "–"
        flower_mask = f"{f['mask_ms']:.0f}" if f else "–"
        flower_upload = f"{f['upload_ratio']:.3f}" if f else "–"
        flower_unmask = f"{f['unmask_s']:.2f}" if f else "–"
        ratio1 = f"{f['unmask_s'] / s['unmask_1core_s']:.1f}" if f else "–"
        ratio2 = f"{f['unmask_s'] / s['unmask_2core_s']:.1f}" if f else "–"
        check = " ✓" if r.get("verified") else ""
        lines.append(
            f"| {r['n']} | {r['d']:,} | {r['dropout']:.0%} | {r['k']} | {r['t']} | "
            f"{c['share_ms']:.1f} / {flower_share} | {c['mask_ms']:.0f} / {flower_mask} | "
            f"{c['upload_ratio']:.3f} / {flower_upload} | {s['unmask_1core_s']:.2f}{check} | "
            f"{s['unmask_2core_s']:.2f} | {flower_unmask} | {ratio1} | {ratio2} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
