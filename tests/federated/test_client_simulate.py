import numpy as np
import pytest

from jobs.federated import client, partitions
from jobs.federated import simulate as sim
from jobs.federated.fedbuff import StalenessPolicy
from tests.kernels import train_reference as ref

SIZES = (64, 10)


def test_client_train_matches_the_numpy_reference(logreg, digits_split):
    train, _ = digits_split
    x, y = train.x[:97], train.y[:97]
    w0 = client.initial_weights("dense", SIZES, seed=1)
    config = client.TrainConfig(epochs=1, batch_size=10, learning_rate=0.1)
    result = client.client_train(logreg, sizes=SIZES, weights=w0, x=x, y=y, config=config, seed=5)
    expected = ref.run_reference(
        op="train",
        batch_fn=lambda w, xb, yb, grad: ref.dense_batch(w, SIZES, xb, yb, grad),
        weights=w0,
        x=x,
        y=y,
        batch_size=10,
        seed=client.derive_seed(5, 0),
        learning_rate=0.1,
    )
    np.testing.assert_allclose(result.update, expected.update, rtol=1e-4, atol=1e-6)
    assert result.mean_loss == pytest.approx(expected.loss_sum / 97, rel=1e-5)
    assert result.samples == 97
    assert result.steps == 10
    assert result.update.dtype == np.float32


def test_epochs_chain_kernel_calls_and_full_batch_is_one_step(logreg, digits_split):
    train, _ = digits_split
    x, y = train.x[:50], train.y[:50]
    w0 = client.initial_weights("dense", SIZES, seed=2)
    one = client.TrainConfig(epochs=1, batch_size=None, learning_rate=0.5)
    full = client.client_train(logreg, sizes=SIZES, weights=w0, x=x, y=y, config=one, seed=0)
    assert full.steps == 1
    three = client.TrainConfig(epochs=3, batch_size=10, learning_rate=0.1, momentum=0.5)
    chained = client.client_train(logreg, sizes=SIZES, weights=w0, x=x, y=y, config=three, seed=0)
    assert chained.steps == 15
    by_hand = w0
    momentum = None
    for epoch in range(3):
        data = client.abi.encode_train_input(
            op="train",
            sizes=SIZES,
            weights=by_hand,
            x=x,
            y=y.astype(np.uint32),
            batch_size=10,
            seed=client.derive_seed(0, epoch),
            learning_rate=0.1,
            momentum=0.5,
            momentum_buffer=momentum,
            return_momentum=True,
        )
        out = logreg.runner.train(data)
        by_hand = by_hand + np.frombuffer(out.update, dtype="<f4")
        momentum = out.momentum
    np.testing.assert_array_equal(chained.update, (by_hand - w0).astype(np.float32))


def test_evaluate_counts_correct_predictions(logreg, digits_split):
    _, test = digits_split
    zero = np.zeros(650, dtype=np.float32)
    result = client.evaluate(logreg, sizes=SIZES, weights=zero, x=test.x, y=test.y, chunk=100)
    assert result.samples == len(test)
    assert result.mean_loss == pytest.approx(np.log(10), rel=1e-6)
    assert result.accuracy == pytest.approx(np.mean(test.y == 0))  # argmax of ties is class 0


def _digits_config(**overrides):
    base = {
        "sizes": SIZES,
        "rounds": 15,
        "clients_per_round": 5,
        "learning_rate": 0.3,
        "seed": 3,
        "latency": sim.LatencyModel(median_seconds=10.0, dropout=0.1),
        "deadline_seconds": 40.0,
        "over_selection": 1.2,
    }
    return sim.SimulationConfig(**{**base, **overrides})


def test_sync_fedavg_on_digits_converges_and_records_stragglers(logreg, digits_split):
    train, test = digits_split
    part = partitions.iid_partition(len(train), clients=20, seed=1)
    result = sim.simulate(_digits_config(), kernel=logreg, train=train, test=test, partition=part)
    assert len(result.records) == 15
    assert result.final_accuracy > 0.90  # stated threshold: logistic regression, 15 rounds
    assert sum(r.dropped for r in result.records) > 0
    assert sum(r.stragglers for r in result.records) > 0
    times = [r.time_seconds for r in result.records]
    assert times == sorted(times)
    assert all(r.reported <= 5 for r in result.records)


def test_async_fedbuff_on_non_iid_digits_converges(logreg, digits_split):
    train, test = digits_split
    part = partitions.shard_partition(train.y, clients=20, seed=1)
    config = _digits_config(
        mode="async",
        rounds=50,
        buffer_size=5,
        concurrency=10,
        staleness=StalenessPolicy(max_staleness=8),
    )
    result = sim.simulate(config, kernel=logreg, train=train, test=test, partition=part)
    assert len(result.records) == 50
    assert result.final_accuracy > 0.85  # stated threshold: 2-shard non-IID, 50 versions
    assert max(r.mean_staleness for r in result.records) > 0


def test_simulation_is_deterministic_for_a_seed_and_stops_at_the_target(logreg, digits_split):
    train, test = digits_split
    part = partitions.dirichlet_partition(train.y, clients=20, alpha=0.5, seed=2)
    config = _digits_config(mode="async", rounds=6, buffer_size=4, concurrency=6)
    first = sim.simulate(config, kernel=logreg, train=train, test=test, partition=part)
    second = sim.simulate(config, kernel=logreg, train=train, test=test, partition=part)
    assert first.records == second.records
    assert np.array_equal(first.weights, second.weights)
    target = first.records[2].accuracy
    stopped = sim.simulate(
        _digits_config(
            mode="async", rounds=6, buffer_size=4, concurrency=6, target_accuracy=target
        ),
        kernel=logreg,
        train=train,
        test=test,
        partition=part,
    )
    assert stopped.records[-1].accuracy >= target
    assert len(stopped.records) <= 3


def test_a_full_fedsgd_round_is_one_centralised_gradient_step(logreg, digits_split):
    train, test = digits_split
    part = partitions.iid_partition(len(train), clients=4, seed=1)
    config = _digits_config(
        algorithm="fedsgd",
        rounds=1,
        clients_per_round=4,
        over_selection=1.0,
        learning_rate=0.5,
        latency=sim.LatencyModel(dropout=0.0),
        deadline_seconds=1e9,
    )
    w0 = client.initial_weights("dense", SIZES, seed=4)
    result = sim.simulate(config, kernel=logreg, train=train, test=test, partition=part, weights=w0)
    assert config.train_config().batch_size is None
    assert result.records[0].reported == 4
    _, _, gradient = ref.dense_batch(w0, SIZES, train.x, train.y, True)
    np.testing.assert_allclose(result.weights, w0 - 0.5 * gradient, rtol=1e-4, atol=1e-6)


def test_sync_dropouts_need_a_deadline():
    with pytest.raises(ValueError, match="deadline"):
        sim.SimulationConfig(sizes=SIZES, deadline_seconds=float("inf"))
