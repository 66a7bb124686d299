"""Server strategies: hand-computed steps, state round trips, no input mutation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jobs.aggregation import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    QFedAvgFold,
    ScaffoldServer,
    fold_weight,
)

f32 = np.float32


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=f32)


def test_fedavg_and_fedprox_add_the_mean_delta():
    for strategy in (FedAvg(), FedProx(proximal_mu=0.1)):
        np.testing.assert_array_equal(
            strategy.step(weights=vec(1, 2), mean_delta=vec(0.5, -1)), vec(1.5, 1)
        )


def test_fedavgm_literal_two_rounds():
    strategy = FedAvgM(server_learning_rate=1.0, server_momentum=0.5)
    # round 1: momentum = pseudo-gradient = -delta = (-1, 0)
    weights = strategy.step(weights=vec(1, 2), mean_delta=vec(1, 0))
    np.testing.assert_array_equal(weights, vec(2, 2))
    # round 2: momentum = 0.5·(-1, 0) + (-1, 0) = (-1.5, 0)
    weights = strategy.step(weights=weights, mean_delta=vec(1, 0))
    np.testing.assert_array_equal(weights, vec(3.5, 2))


def test_fedavgm_without_momentum_is_scaled_fedavg():
    strategy = FedAvgM(server_learning_rate=0.5)
    np.testing.assert_array_equal(strategy.step(weights=vec(1), mean_delta=vec(2)), vec(2))
    assert strategy.momentum is None


def test_fedadam_literal_first_step():
    # delta = 2: m = 0.1·2 = 0.2, v = 0.01·4 = 0.04, m / sqrt(v) = 1
    plain = FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=0.0, bias_correction=False)
    np.testing.assert_allclose(plain.step(weights=vec(1), mean_delta=vec(2)), vec(1.1))
    # Flower's bias correction at its first round uses exponent 2
    corrected = FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=0.0)
    eta_t = 0.1 * math.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    np.testing.assert_allclose(corrected.step(weights=vec(1), mean_delta=vec(2)), vec(1 + eta_t))


def test_fedyogi_literal_first_step():
    # v = 0 - 0.01·4·sign(0 - 4) = 0.04, m = 0.2: step = eta · 0.2 / 0.2
    strategy = FedYogi(eta=0.01, beta_1=0.9, beta_2=0.99, tau=0.0)
    np.testing.assert_allclose(strategy.step(weights=vec(1), mean_delta=vec(2)), vec(1.01))


def test_fedadagrad_literal_two_steps():
    strategy = FedAdagrad(eta=0.1, tau=0.0)
    # step 1: m = 2, v = 4 → +0.1; step 2: m = 2, v = 8 → +0.1·2/sqrt(8)
    weights = strategy.step(weights=vec(1), mean_delta=vec(2))
    np.testing.assert_allclose(weights, vec(1.1))
    weights = strategy.step(weights=weights, mean_delta=vec(2))
    np.testing.assert_allclose(weights, vec(1.1 + 0.2 / math.sqrt(8)), rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
        lambda: FedAdam(tau=1e-3),
        lambda: FedYogi(),
        lambda: FedAdagrad(tau=1e-3),
        lambda: ScaffoldServer(total_clients=10),
    ],
)
def test_strategy_state_round_trip_equals_uninterrupted(make):
    rng = np.random.default_rng(3)
    deltas = rng.normal(0, 0.1, (4, 32)).astype(f32)
    controls = rng.normal(0, 0.1, (4, 32)).astype(f32)

    def step(strategy, weights, index):
        if isinstance(strategy, ScaffoldServer):
            return strategy.step(
                weights=weights,
                mean_delta=deltas[index],
                mean_control_delta=controls[index],
                participants=4,
            )
        return strategy.step(weights=weights, mean_delta=deltas[index])

    straight, weights = make(), np.zeros(32, dtype=f32)
    for index in range(4):
        weights = step(straight, weights, index)
    # given a strategy restarted from its saved state after two rounds
    first, resumed_weights = make(), np.zeros(32, dtype=f32)
    for index in range(2):
        resumed_weights = step(first, resumed_weights, index)
    resumed = make()
    resumed.load_state(first.state_bytes())
    for index in range(2, 4):
        resumed_weights = step(resumed, resumed_weights, index)
    # then it ends exactly where the uninterrupted one does
    np.testing.assert_array_equal(resumed_weights, weights)


@pytest.mark.parametrize(
    "strategy", [FedAvg(), FedAvgM(server_momentum=0.9), FedAdam(), FedYogi(), FedAdagrad()]
)
def test_strategies_never_mutate_their_inputs(strategy):
    weights, delta = vec(1, 2, 3), vec(0.1, -0.2, 0.3)
    kept = (weights.copy(), delta.copy())
    for _ in range(2):
        result = strategy.step(weights=weights, mean_delta=delta)
    assert result.dtype == f32
    np.testing.assert_array_equal(weights, kept[0])
    np.testing.assert_array_equal(delta, kept[1])


def test_scaffold_server_literal():
    server = ScaffoldServer(total_clients=10, global_learning_rate=0.5)
    np.testing.assert_array_equal(server.control_f32(2), vec(0, 0))
    weights = server.step(
        weights=vec(1, 1), mean_delta=vec(2, -2), mean_control_delta=vec(2, 4), participants=5
    )
    np.testing.assert_array_equal(weights, vec(2, 0))  # x + 0.5 · mean Δy
    np.testing.assert_array_equal(server.control_f32(2), vec(1, 2))  # c + 5/10 · mean Δc
    with pytest.raises(ValueError, match="participants"):
        server.step(
            weights=weights, mean_delta=vec(0, 0), mean_control_delta=vec(0, 0), participants=11
        )


def test_qfedavg_with_q_zero_is_the_unweighted_mean():
    # q = 0: Δ'_k = -L·Δ_k and h_k = L, so w' = w + mean(Δ_k)
    fold = QFedAvgFold(vec(1, 1), q=0.0, client_learning_rate=0.1)
    fold.fold("a", vec(1, 0), loss=3.0)
    fold.fold("b", vec(3, 2), loss=0.5)
    assert not fold.fold("a", vec(100, 100), loss=1.0)
    np.testing.assert_allclose(fold.finish(), vec(3, 2), rtol=1e-6)


def test_qfedavg_literal_one_client():
    # L = 2, Δ = (1, 0), F = 4, q = 1: g = (-2, 0), Δ' = 4·g, h = 1·1·4 + 2·4 = 12
    fold = QFedAvgFold(vec(0, 0), q=1.0, client_learning_rate=0.5)
    fold.fold("a", vec(1, 0), loss=4.0)
    np.testing.assert_allclose(fold.finish(), vec(8 / 12, 0), rtol=1e-6)


def test_fold_weight_discounts_staleness():
    assert fold_weight(100) == 100.0
    assert fold_weight(100, staleness=3) == 50.0
    assert fold_weight(100, staleness=1, staleness_exponent=1.0) == 50.0


def test_qfedavg_checkpoint_restore_equals_uninterrupted():
    rng = np.random.default_rng(8)
    weights = rng.normal(size=20).astype(f32)
    deltas = rng.normal(0, 0.1, (5, 20)).astype(f32)
    losses = rng.uniform(0.1, 2.0, 5)
    straight = QFedAvgFold(weights, q=0.5, client_learning_rate=0.05)
    for index in range(5):
        straight.fold(str(index), deltas[index], losses[index])
    interrupted = QFedAvgFold(weights, q=0.5, client_learning_rate=0.05)
    for index in range(3):
        interrupted.fold(str(index), deltas[index], losses[index])
    resumed = QFedAvgFold.restore(interrupted.checkpoint())
    for index in range(5):  # the retried task refolds everything; the first three are skipped
        resumed.fold(str(index), deltas[index], losses[index])
    np.testing.assert_array_equal(resumed.finish(), straight.finish())
