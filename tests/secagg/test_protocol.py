"""SecAgg+ rounds end to end in one process: sums, dropouts, aborts and refusals."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag

from jobs.secagg import (
    RequestRefused,
    RoundAborted,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    decode_sum,
    encode,
    neighbour_count,
    neighbours,
    scale_for,
    unmask_range,
)
from jobs.secagg.primitives import add_masks_inplace, expand_mask
from jobs.secagg.simulate import PHASES, run_round

N_CLIENTS = 50
DIMENSION = 257  # not a multiple of 4, so the last keystream block is partly used


def _config(threshold: int = 0, n: int = N_CLIENTS, dimension: int = DIMENSION) -> RoundConfig:
    return RoundConfig(
        job="job-7",
        round_number=3,
        session_id=b"session-" + bytes(24),
        graph_seed=b"graph-seed",
        client_ids=tuple(range(1, n + 1)),
        dimension=dimension,
        threshold=threshold,
    )


def _inputs(config: RoundConfig) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(11)
    return {i: rng.integers(0, 2**32, config.dimension, dtype=np.uint32) for i in config.client_ids}


def _plain_sum(inputs: dict[int, np.ndarray], ids) -> np.ndarray:
    total = np.zeros_like(next(iter(inputs.values())))
    for i in ids:
        total += inputs[i]
    return total


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("percent", [0, 10, 30])
def test_secure_sum_equals_plain_sum_with_dropout(phase: str, percent: int) -> None:
    # given a 50-client round with k = 12; t = 5 tolerates 30 % dropout (the default t = 7
    # is a strict majority of 12 and aborts at 30 %, see the threshold test below)
    config = _config(threshold=5 if percent == 30 else 0)
    inputs = _inputs(config)
    dropping = np.random.default_rng(percent).choice(
        config.client_ids, N_CLIENTS * percent // 100, replace=False
    )
    # when those clients drop before answering the phase
    total, server = run_round(config, inputs, drop_before={int(i): phase for i in dropping})
    # then the aggregate is exactly the plain sum of the inputs that were masked in
    survivors = set(config.client_ids) - set(dropping.tolist())
    if phase == "unmask":  # dropping at unmask still leaves their masked inputs in the sum
        survivors = set(config.client_ids)
    assert set(server.alive) == survivors
    np.testing.assert_array_equal(total, _plain_sum(inputs, survivors))
    assert server.phase == "done"


def test_float_updates_sum_through_the_encoding() -> None:
    # given clipped float updates encoded at the cohort's scale
    config = _config(n=12, dimension=64)
    rng = np.random.default_rng(5)
    bound = 1.0
    scale = scale_for(n_clients=12, bound=bound)
    floats = {i: rng.uniform(-bound, bound, 64) for i in config.client_ids}
    encoded = {i: encode(v, scale=scale, bound=bound) for i, v in floats.items()}
    # when they are securely summed and decoded
    total, _ = run_round(config, encoded)
    # then the result is the float sum within one rounding step per client
    expected = sum(floats.values())
    np.testing.assert_allclose(decode_sum(total, scale=scale), expected, atol=12 / scale)


@pytest.mark.parametrize("phase", PHASES)
def test_round_below_threshold_aborts_cleanly(phase: str) -> None:
    # given the default threshold (7 of 12 neighbours) and 40 % of clients dropping
    config = _config()
    dropping = np.random.default_rng(1).choice(config.client_ids, 20, replace=False)
    # when the phase closes then the server aborts and stays aborted
    with pytest.raises(RoundAborted, match="neighbours, t is 7"):
        run_round(config, _inputs(config), drop_before={int(i): phase for i in dropping})


def test_aborted_server_refuses_further_messages() -> None:
    config = _config(n=5, dimension=4)
    server = SecAggServer(config)
    server.receive_advertisement(SecAggClient(config, 1).advertise_keys())
    with pytest.raises(RoundAborted):
        server.close_advertise()
    assert server.phase == "aborted"
    with pytest.raises(RoundAborted):
        server.receive_advertisement(SecAggClient(config, 2).advertise_keys())
    assert server.masked_sum is None


def _client_at_unmask(config: RoundConfig) -> tuple[SecAggClient, dict[str, list[int]]]:
    clients = {i: SecAggClient(config, i) for i in config.client_ids}
    server = SecAggServer(config)
    for client in clients.values():
        server.receive_advertisement(client.advertise_keys())
    keys = server.close_advertise()
    for i, client in clients.items():
        server.receive_shares(client.share_keys(keys[i]))
    ciphertexts = server.close_share()
    for i, client in clients.items():
        server.receive_masked_input(
            client.masked_input(ciphertexts[i], np.zeros(config.dimension, np.uint32))
        )
    return clients[1], server.close_masked_input()


def test_client_refuses_overlapping_alive_and_dropped_sets() -> None:
    # given a client that sent its masked input
    client, request = _client_at_unmask(_config(n=6, dimension=8))
    # when the server claims client 2 both alive and dropped, then the client refuses
    with pytest.raises(RequestRefused, match="overlap"):
        client.unmask(request["alive"], [2])
    # and it still answers an honest request afterwards
    assert set(client.unmask(request["alive"], [])["shares"]) == {2, 3, 4, 5, 6}


def test_client_refuses_too_few_alive_neighbours() -> None:
    config = _config(n=6, dimension=8)  # full graph: k = 5, t = 3
    client, _ = _client_at_unmask(config)
    with pytest.raises(RequestRefused, match="fewer than t"):
        client.unmask([1, 2, 3], [4, 5, 6])


def test_unmasking_by_coordinate_ranges_equals_the_whole() -> None:
    # given a finished round with one client dropped after sharing
    config = _config(n=20, dimension=1001)
    inputs = _inputs(config)
    total, server = run_round(config, inputs, drop_before={4: "masked_input", 9: "unmask"})
    # when three workers each unmask a coordinate range of the masked sum
    pieces = [
        unmask_range(server.plan, server.masked_sum[a:b], start=a, stop=b)
        for a, b in [(0, 3), (3, 500), (500, 1001)]
    ]
    # then together they give the whole aggregate
    expected = _plain_sum(inputs, set(config.client_ids) - {4})
    np.testing.assert_array_equal(np.concatenate(pieces), expected)
    np.testing.assert_array_equal(total, expected)


def test_tampered_share_ciphertext_is_rejected() -> None:
    config = _config(n=5, dimension=4)
    clients = {i: SecAggClient(config, i) for i in config.client_ids}
    server = SecAggServer(config)
    for c in clients.values():
        server.receive_advertisement(c.advertise_keys())
    keys = server.close_advertise()
    for i, c in clients.items():
        server.receive_shares(c.share_keys(keys[i]))
    cts = server.close_share()
    forged = dict(cts[1])
    forged[2] = forged[2][:-1] + bytes([forged[2][-1] ^ 1])
    with pytest.raises(InvalidTag):
        clients[1].masked_input(forged, np.zeros(4, np.uint32))
    swapped = dict(cts[1])
    swapped[2], swapped[3] = cts[1][3], cts[1][2]  # a relay that swaps senders is caught too
    with pytest.raises(InvalidTag):
        clients[1].masked_input(swapped, np.zeros(4, np.uint32))


@pytest.mark.parametrize(("n", "k"), [(2, 1), (7, 6), (8, 6), (100, 14), (500, 18), (1000, 20)])
def test_neighbour_graph_is_k_regular_and_symmetric(n: int, k: int) -> None:
    assert neighbour_count(n) == k
    graph = neighbours(range(1, n + 1), b"seed", k)
    assert all(len(adjacent) == k and i not in adjacent for i, adjacent in graph.items())
    assert all(i in graph[j] for i, adjacent in graph.items() for j in adjacent)
    assert graph != neighbours(range(1, n + 1), b"other seed", k) or k == n - 1


def test_mask_expansion_starts_at_any_coordinate() -> None:
    key = bytes(range(32))
    whole = expand_mask(key, 40)
    for start in range(9):
        np.testing.assert_array_equal(expand_mask(key, 31 - start, start=start), whole[start:31])
    assert whole.dtype == np.uint32


def test_packages_import_without_django() -> None:
    code = (
        "import sys, jobs.secagg, jobs.secagg.simulate, jobs.privacy, jobs.privacy.dp_fedavg; "
        "assert not any(m.startswith('django') for m in sys.modules), 'django imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("start", "length"), [(0, 5), (3, 40_000), (16_383, 16_390), (7, 0)])
def test_adding_many_masks_by_chunks_equals_adding_each_mask(start: int, length: int) -> None:
    keys = [bytes([i]) * 32 for i in range(5)]
    signs = [1, -1, -1, 1, 1]
    target = np.arange(length, dtype=np.uint32)
    expected = target.copy()
    for key, sign in zip(keys, signs, strict=True):
        mask = expand_mask(key, length, start=start)
        expected = expected + mask if sign > 0 else expected - mask
    add_masks_inplace(target, keys, signs, start=start)
    np.testing.assert_array_equal(target, expected)


def test_secrets_stay_out_of_reprs() -> None:
    config = _config(n=6, dimension=8)
    client, _ = _client_at_unmask(config)
    text = repr(client)
    assert client._mask_private.hex() not in text
    assert "_self_seed" not in text
    _, server = run_round(config, _inputs(config))
    assert "self_mask_keys" not in repr(server.plan)


def test_server_rejects_malformed_and_repeated_messages_without_side_effects() -> None:
    config = _config(n=6, dimension=8)
    clients = {i: SecAggClient(config, i) for i in config.client_ids}
    server = SecAggServer(config)
    adverts = {i: c.advertise_keys() for i, c in clients.items()}
    with pytest.raises(ValueError, match="not in the cohort"):
        server.receive_advertisement({**adverts[1], "client_id": 99})
    with pytest.raises(ValueError, match="32 bytes"):
        server.receive_advertisement({**adverts[1], "mask_public": b"short"})
    assert server.advertised == {}
    for advert in adverts.values():
        server.receive_advertisement(advert)
    keys = server.close_advertise()
    shares = {i: c.share_keys(keys[i]) for i, c in clients.items()}
    partial = dict(shares[1]["ciphertexts"])
    partial.pop(2)
    with pytest.raises(ValueError, match="one ciphertext per advertised neighbour"):
        server.receive_shares({"client_id": 1, "ciphertexts": partial})
    assert server.shared == {}
    for message in shares.values():
        server.receive_shares(message)
    cts = server.close_share()
    masked = clients[1].masked_input(cts[1], np.ones(8, np.uint32))
    server.receive_masked_input(masked)
    with pytest.raises(ValueError, match="already sent"):
        server.receive_masked_input(masked)
    with pytest.raises(ValueError, match="uint32 of the round's dimension"):
        server.receive_masked_input({"client_id": 2, "masked": np.ones(7, np.uint32)})
    assert server.masked_from == {1}
    np.testing.assert_array_equal(server.masked_sum, masked["masked"])


def test_a_wrong_key_share_aborts_the_round_instead_of_unmasking_wrongly() -> None:
    # given client 6 dropped after sharing and a neighbour that lies about its key share
    config = _config(n=6, dimension=8)  # full graph, t = 3
    clients = {i: SecAggClient(config, i) for i in config.client_ids}
    server = SecAggServer(config)
    for c in clients.values():
        server.receive_advertisement(c.advertise_keys())
    keys = server.close_advertise()
    for i, c in clients.items():
        server.receive_shares(c.share_keys(keys[i]))
    cts = server.close_share()
    for i in range(1, 6):
        server.receive_masked_input(clients[i].masked_input(cts[i], np.zeros(8, np.uint32)))
    request = server.close_masked_input()
    assert request == {"alive": [1, 2, 3, 4, 5], "dropped": [6]}
    for i in range(1, 6):
        answer = clients[i].unmask(request["alive"], request["dropped"])
        if i == 1:
            answer["shares"][6] = (12345).to_bytes(33, "big")
        server.receive_unmask(answer)
    # when the server reconstructs, then it aborts rather than remove a wrong mask
    with pytest.raises(RoundAborted, match="client 6"):
        server.close_unmask()
    assert server.plan is None
