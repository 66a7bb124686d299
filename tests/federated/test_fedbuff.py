import numpy as np
import pytest

from jobs.aggregation import FedAvgM, UpdateRejected
from jobs.federated.fedbuff import (
    BufferedAsyncServer,
    Outcome,
    StalenessPolicy,
    Weighting,
)


def test_staleness_weightings():
    poly = StalenessPolicy(max_staleness=5, weighting=Weighting.POLYNOMIAL, exponent=0.5)
    assert poly.weight(0) == 1.0
    assert poly.weight(3) == 0.5
    assert poly.weight(6) is None
    constant = StalenessPolicy(max_staleness=2, weighting=Weighting.CONSTANT)
    assert [constant.weight(s) for s in range(4)] == [1.0, 1.0, 1.0, None]
    hinge = StalenessPolicy(
        max_staleness=20, weighting=Weighting.HINGE, exponent=0.5, hinge_after=4
    )
    assert hinge.weight(4) == 1.0
    assert hinge.weight(8) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="staleness"):
        poly.weight(-1)


def test_every_k_folds_emit_a_version_with_the_fedbuff_step():
    w = np.zeros(3, dtype=np.float32)
    server = BufferedAsyncServer(w, buffer_size=2, staleness=StalenessPolicy(exponent=1.0))
    first = server.submit("a", np.array([1, 0, 0], np.float32), examples=10, base_version=0)
    assert (first.outcome, first.new_version) == (Outcome.FOLDED, None)
    second = server.submit("b", np.array([0, 2, 0], np.float32), examples=30, base_version=0)
    assert second.new_version == 1
    assert server.version == 1
    np.testing.assert_allclose(server.weights, [0.25, 1.5, 0.0])
    # one version later: staleness 1 halves the weight (a = 1); divided by examples, not weight
    third = server.submit("c", np.array([4, 0, 0], np.float32), examples=10, base_version=0)
    assert (third.staleness, third.weight) == (1, 5.0)
    server.submit("d", np.array([0, 0, 4], np.float32), examples=10, base_version=1)
    np.testing.assert_allclose(server.weights, [0.25 + 1.0, 1.5, 2.0])
    assert server.version == 2
    assert server.folded_total == 4


def test_normalized_mode_is_a_weighted_mean():
    server = BufferedAsyncServer(
        np.zeros(1, np.float32),
        buffer_size=2,
        staleness=StalenessPolicy(exponent=1.0),
        normalize=True,
    )
    server.submit("warm", np.ones(1, np.float32), examples=1, base_version=0)
    server.submit("warm2", np.ones(1, np.float32), examples=1, base_version=0)
    server.submit("a", np.array([3.0], np.float32), examples=1, base_version=0)  # s=1: weight 1/2
    server.submit("b", np.array([0.0], np.float32), examples=1, base_version=1)  # weight 1
    np.testing.assert_allclose(server.weights, [1.0 + 1.0])


def test_too_stale_updates_are_dropped_and_duplicates_ignored():
    server = BufferedAsyncServer(
        np.zeros(2, np.float32), buffer_size=1, staleness=StalenessPolicy(max_staleness=1)
    )
    for i in range(3):
        server.submit(f"u{i}", np.ones(2, np.float32), examples=1, base_version=server.version)
    stale = server.submit("old", np.ones(2, np.float32), examples=1, base_version=0)
    assert stale.outcome == Outcome.STALE
    assert server.stale_dropped == 1
    assert server.submit("u0", np.ones(2, np.float32), examples=1, base_version=3).outcome == (
        Outcome.DUPLICATE
    )
    np.testing.assert_allclose(server.weights, [3.0, 3.0])


def test_invalid_updates_change_nothing():
    server = BufferedAsyncServer(np.zeros(2, np.float32), buffer_size=2)
    with pytest.raises(UpdateRejected):
        server.submit("nan", np.array([np.nan, 0], np.float32), examples=1, base_version=0)
    with pytest.raises(UpdateRejected):
        server.submit("future", np.zeros(2, np.float32), examples=1, base_version=5)
    assert server.buffered == 0
    assert server.folded_total == 0


def test_checkpoint_restore_resumes_bit_for_bit():
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=50).astype(np.float32) for _ in range(11)]

    def fresh():
        return BufferedAsyncServer(
            np.zeros(50, np.float32),
            buffer_size=3,
            strategy=FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
        )

    def feed(server, items):
        for i, u in items:
            server.submit(f"u{i}", u, examples=i + 1, base_version=max(0, server.version - i % 3))

    whole = fresh()
    feed(whole, enumerate(updates))
    halted = fresh()
    feed(halted, list(enumerate(updates))[:7])  # two versions and one buffered update
    blob = halted.checkpoint()
    resumed = BufferedAsyncServer.restore(
        blob, strategy=FedAvgM(server_learning_rate=0.7, server_momentum=0.9)
    )
    assert (resumed.version, resumed.buffered) == (2, 1)
    feed(resumed, list(enumerate(updates))[6:])  # the retried update is a duplicate
    assert resumed.version == whole.version
    assert np.array_equal(resumed.weights, whole.weights)
    assert resumed.checkpoint() == whole.checkpoint()
    with pytest.raises(ValueError, match="digest"):
        BufferedAsyncServer.restore(blob[:-1] + bytes([blob[-1] ^ 1]))
