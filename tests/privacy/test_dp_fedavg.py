"""A DP-FedAvg round around secure aggregation: client_encode → SecAgg+ → server_finish."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.privacy import AdaptiveClip
from jobs.privacy.dp_fedavg import DpRound, client_encode, server_finish
from jobs.secagg import RoundConfig
from jobs.secagg.simulate import run_round

N, D = 24, 3000


def _round(params: DpRound, updates: dict[int, np.ndarray], seed: int):
    dimension = D + (1 if params.adaptive else 0)
    config = RoundConfig(
        job="dp-round",
        round_number=1,
        session_id=bytes(32),
        graph_seed=b"dp",
        client_ids=tuple(updates),
        dimension=dimension,
    )
    rng = np.random.default_rng(seed)
    inputs = {i: client_encode(u, params, random_bytes=rng.bytes) for i, u in updates.items()}
    drop = {2: "masked_input", 5: "masked_input"}
    total, server = run_round(config, inputs, drop_before=drop)
    result = server_finish(total, params, survivors=len(server.alive), rng=rng)
    return result, server


def _updates(seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    # two thirds of the clients inside C = 1, one third far outside
    return {i: rng.normal(0, (0.01 if i % 3 else 0.1), D) for i in range(1, N + 1)}


@pytest.mark.parametrize("mechanism", ["central", "skellam"])
def test_mean_update_is_the_clipped_mean_plus_the_stated_noise(mechanism: str) -> None:
    # given clipped updates of 24 clients, z = 2, C = 1, noise sized for 22 survivors
    params = DpRound(
        clip_norm=1.0, noise_multiplier=2.0, n_clients=N, min_survivors=22, mechanism=mechanism
    )
    updates = _updates(1)
    # when two clients drop after sharing
    result, server = _round(params, updates, seed=2)
    # then the mean is the survivors' clipped mean, with noise of std z·C / 22
    clipped = [
        u * min(1.0, 1.0 / np.linalg.norm(u)) for i, u in updates.items() if i in server.alive
    ]
    error = result.mean_update - np.mean(clipped, axis=0)
    assert error.std() == pytest.approx(2.0 / 22, rel=0.06)
    assert result.next_clip is None


@pytest.mark.parametrize("mechanism", ["central", "skellam"])
def test_adaptive_clipping_counts_the_clients_within_the_bound(mechanism: str) -> None:
    # given adaptive clipping aiming at the median, with little noise on the count
    clip = AdaptiveClip(clip_norm=1.0, target_quantile=0.5, learning_rate=0.2, count_noise_std=2)
    params = DpRound(
        clip_norm=1.0,
        noise_multiplier=0.5,
        n_clients=N,
        min_survivors=22,
        mechanism=mechanism,
        adaptive=clip,
    )
    updates = _updates(3)
    result, server = _round(params, updates, seed=4)
    within = sum(np.linalg.norm(updates[i]) <= 1.0 for i in server.alive)
    # then the noised fraction is near the true one (2/3) and C shrinks toward the median
    assert result.noisy_within_fraction == pytest.approx(within / len(server.alive), abs=0.3)
    assert result.next_clip.clip_norm < 1.0
    assert result.mean_update.shape == (D,)


def test_encoding_leaves_headroom_for_distributed_noise() -> None:
    central = DpRound(clip_norm=1.0, noise_multiplier=1.0, n_clients=100, min_survivors=90)
    skellam = DpRound(
        clip_norm=1.0, noise_multiplier=1.0, n_clients=100, min_survivors=90, mechanism="skellam"
    )
    assert central.bound == 1.0
    # the rounds' sizing: 100·(s·C + 1) + 8·z·C·s·√(100/90) = 2^31 − 1, not a bound of C + 8·z·C
    # per client (the shares' sum grows with √n, not n)
    expected = (2**31 - 1 - 100) / (100 + 8 * (100 / 90) ** 0.5)
    assert skellam.scale == pytest.approx(expected)
    assert central.scale / 9 < skellam.scale < central.scale
