"""The edge worker's side of DP in rounds: it clips the trained update to the invite's
``dp.clip_norm`` (the rest of the body unchanged), and its distributed-noise hook draws integer
Skellam shares that add up, through the secure-aggregation encoding, to the target noise."""

from __future__ import annotations

import array
import math

import numpy as np
import pytest

from ccgsc_worker.dp import add_share, clip_update, noise_share, per_client_variance
from ccgsc_worker.training import METRICS
from jobs.federated.client import TrainConfig, client_train, load_training_kernel
from jobs.fl_shards import decode_shard
from jobs.secagg.encoding import decode_sum, encode, scale_for
from tests.edge_worker.test_edge_training import (  # noqa: F401 - the shard fixture
    SIZES,
    FakeServer,
    _invite,
    _run,
    _weights,
    digits_shard,
)


def test_the_uploaded_update_is_clipped_to_the_invites_clip_norm(digits_shard: bytes) -> None:  # noqa: F811
    # given the update the round would upload, and an invite asking to clip to half its norm
    weights = _weights()
    x, y, _ = decode_shard(digits_shard)
    plain = client_train(
        load_training_kernel("logreg"),
        sizes=tuple(SIZES),
        weights=np.frombuffer(weights, "<f4"),
        x=x,
        y=y,
        config=TrainConfig(epochs=1, batch_size=10, learning_rate=0.1),
        seed=99,
    )
    clip = plain.update_l2 / 2
    invite = _invite(weights)
    invite["hyperparameters"]["dp"] = {"clip_norm": clip}
    server = FakeServer(weights, digits_shard)
    # when the edge worker trains and uploads it
    assert _run(server, invite) == ("uploaded", "")
    # then the body is the same update scaled to norm C, and the header says the clipped norm
    body = server.body()
    uploaded = np.frombuffer(body[32:], "<f4").astype(np.float64)
    scaled = plain.update.astype(np.float64) * (clip / plain.update_l2)
    np.testing.assert_allclose(uploaded, scaled, rtol=1e-6, atol=1e-9)
    status, samples, _loss, _correct, _d, norm = METRICS.unpack(body[:32])
    assert (status, samples) == (0, len(y))
    assert norm == pytest.approx(clip, rel=1e-6)


def test_clip_update_keeps_a_short_update_byte_for_byte() -> None:
    update = array.array("f", [3.0, 4.0]).tobytes()
    assert clip_update(update, 5.0) == (update, 5.0, True)
    clipped, norm, within = clip_update(update, 1.0)
    assert array.array("f", clipped).tolist() == pytest.approx([0.6, 0.8])
    assert (norm, within) == (pytest.approx(1.0), False)
    with pytest.raises(ValueError, match="positive"):
        clip_update(update, 0.0)


def test_survivors_shares_add_up_to_the_central_noise_through_the_encoding() -> None:
    # given m = 5 clients each encoding a zero update at the cohort's scale, with z = 1, C = 1
    m, d, z, clip = 5, 4_000, 1.0, 1.0
    scale = scale_for(n_clients=m, bound=clip + 8 * z * clip)
    variance = per_client_variance(noise_multiplier=z, clip_norm=clip, scale=scale, min_survivors=m)
    stream = np.random.default_rng(7).bytes  # seeded in the test only; clients read os.urandom
    total = np.zeros(d, dtype=np.uint32)
    for _ in range(m):
        encoded = encode(np.zeros(d), scale=scale, bound=clip)
        share = noise_share(d, mechanism="skellam", variance=variance, random_bytes=stream)
        total += add_share(encoded, share)
    # when the server decodes the (unmasked) sum
    noise = decode_sum(total.astype(np.uint32), scale=scale)
    # then it carries Gaussian noise of std z·C, as if the server had added it
    assert abs(noise.std() - z * clip) < 6 * z * clip / math.sqrt(2 * d)
    wrapped = add_share(np.array([0xFFFFFFFF, 0], dtype=np.uint32), np.array([1, -1]))
    assert wrapped.tolist() == [0, 0xFFFFFFFF]  # wraps in Z_2^32
    with pytest.raises(ValueError, match="unknown noise mechanism"):
        noise_share(3, mechanism="gaussian", variance=1.0)
