"""One secure round on the wire's messages where browser clients (secagg-round.js under Node)
and edge-worker clients (ccgsc_worker.secagg.wire) share the cohort: every message passes
through the protocol's schemas, the pure server relays and unmasks, and the unmasked sum equals
the plain sum of the clipped updates to fixed-point precision."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ccgsc_worker import protocol as edge
from ccgsc_worker.secagg.wire import WireClient, b64decode, b64encode
from jobs import protocol as server_protocol
from jobs.privacy import per_client_variance
from jobs.privacy.skellam import distributed_scale
from jobs.secagg import RoundConfig, SecAggServer, decode_sum, scale_for, unmask_range

SCRIPT = Path(__file__).with_name("js_round.mjs")
NODE = shutil.which("node")
D = 1000
N = 7
JOB = "3f1b2c4d-0000-4000-8000-000000000001"


class NodeClients:
    """A Node process hosting the browser clients."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv: node and our own script
            [NODE, str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def call(self, op: str, **fields) -> dict:  # noqa: ANN003
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        if not answer.pop("ok"):
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


def _inbound(message: dict) -> dict:
    """What the consumer does first: the message must pass its schema as a text frame."""
    return server_protocol.parse_text(edge.encode_text(message))


def _outbound(kind: str, fields: dict) -> dict:
    """What a client receives: built by the server's builder, parsed by the edge parser."""
    built = server_protocol.secagg(kind=kind, fields=fields, deadline_ms=1000)
    return edge.parse_server_message(server_protocol.encode(built))


@pytest.mark.parametrize("noise_multiplier", [None, 1.5])
def test_browser_and_edge_clients_share_a_secure_round(noise_multiplier: float | None):
    # given a cohort of seven: clients 1, 3, 5, 7 in the browser, 2, 4, 6 on edge workers, and
    # for distributed DP Skellam shares sized for 5 survivors at z = 1.5, C = the bound
    session, seed = os.urandom(32), os.urandom(32)
    bound = 0.5
    block = {
        "clients": N,
        "threshold": 4,
        "session": b64encode(session),
        "graph_seed": b64encode(seed),
        "scale": scale_for(n_clients=N, bound=bound),
        "bound": bound,
    }
    if noise_multiplier is not None:
        block["scale"] = distributed_scale(
            n_clients=N, clip_norm=bound, noise_multiplier=noise_multiplier, noise_shares=5
        )
        variance = per_client_variance(
            noise_multiplier=noise_multiplier,
            clip_norm=bound,
            scale=block["scale"],
            min_survivors=5,
        )
        block["noise"] = {"mechanism": "skellam", "variance": variance}
    config = RoundConfig(
        job=JOB,
        round_number=3,
        session_id=session,
        graph_seed=seed,
        client_ids=tuple(range(1, N + 1)),
        dimension=D,
        threshold=4,
    )
    rng = np.random.default_rng(9)
    updates = {c: rng.normal(0, 0.3, D).astype(np.float32) for c in config.client_ids}
    browser = [c for c in config.client_ids if c % 2]
    node = NodeClients()
    edge_clients: dict[int, WireClient] = {}
    server = SecAggServer(config)

    def send(client: int, message: dict | None) -> dict | None:
        if client in browser:
            return node.call("handle", id=client, message=message)["message"]
        wire = edge_clients[client]
        handlers = {
            "secagg_keys": wire.on_keys,
            "secagg_ciphertexts": wire.on_ciphertexts,
            "secagg_unmask": wire.on_unmask,
        }
        return handlers[message["type"]](message)

    try:
        # when each advertises on its invite
        for client in config.client_ids:
            invite = {
                "job": JOB,
                "round": 3,
                "participation": 100 + client,
                "model": {"parameters": D},
                "secagg": {**block, "client": client},
            }
            if client in browser:
                advert = node.call("create", id=client, invite=invite)["message"]
            else:
                edge_clients[client] = WireClient(
                    job=JOB,
                    round_number=3,
                    participation=100 + client,
                    block=invite["secagg"],
                    dimension=D,
                )
                advert = edge_clients[client].advertise()
            advert = _inbound(advert)
            server.receive_advertisement(
                {
                    "client_id": client,
                    "cipher_public": b64decode(advert["cipher_public"]),
                    "mask_public": b64decode(advert["mask_public"]),
                }
            )
        keys = server.close_advertise()
        # and shares keys with its neighbours
        for client, theirs in keys.items():
            fields = {
                "participation": 100 + client,
                "round": 3,
                "keys": [
                    {
                        "client": j,
                        "cipher_public": b64encode(k["cipher_public"]),
                        "mask_public": b64encode(k["mask_public"]),
                    }
                    for j, k in sorted(theirs.items())
                ],
            }
            shares = _inbound(send(client, _outbound("secagg_keys", fields)))
            server.receive_shares(
                {
                    "client_id": client,
                    "ciphertexts": {
                        i["client"]: b64decode(i["ciphertext"]) for i in shares["ciphertexts"]
                    },
                }
            )
        relayed = server.close_share()
        # and all but client 2 (an edge worker that dies) mask and send their updates
        for client, theirs in relayed.items():
            fields = {
                "participation": 100 + client,
                "round": 3,
                "ciphertexts": [
                    {"client": j, "ciphertext": b64encode(ct)} for j, ct in sorted(theirs.items())
                ],
            }
            assert send(client, _outbound("secagg_ciphertexts", fields)) is None
            if client == 2:
                continue
            if client in browser:
                update = b64encode(updates[client].astype("<f4").tobytes())
                masked = b64decode(node.call("mask", id=client, update=update)["masked"])
                masked = np.frombuffer(masked, dtype="<u4").astype(np.uint32)
            else:
                masked = edge_clients[client].mask_update(updates[client])
            server.receive_masked_input({"client_id": client, "masked": masked})
        request = server.close_masked_input()
        graph = config.graph()
        # and the survivors reveal the shares the fixed sets ask for
        for client in request["alive"]:
            fields = {
                "participation": 100 + client,
                "round": 3,
                "alive": sorted((graph[client] | {client}) & set(request["alive"])),
                "dropped": sorted(graph[client] & set(request["dropped"])),
            }
            reveal = _inbound(send(client, _outbound("secagg_unmask", fields)))
            server.receive_unmask(
                {
                    "client_id": client,
                    "shares": {i["client"]: b64decode(i["share"]) for i in reveal["shares"]},
                }
            )
        total = unmask_range(server.close_unmask(), server.masked_sum)
    finally:
        node.close()
    # then the unmasked sum is the plain sum of the six survivors' clipped updates
    assert request == {"alive": [1, 3, 4, 5, 6, 7], "dropped": [2]}
    plain = sum(np.clip(updates[c].astype(np.float64), -bound, bound) for c in request["alive"])
    decoded = decode_sum(total, scale=block["scale"])
    if noise_multiplier is None:
        np.testing.assert_allclose(decoded, plain, atol=len(request["alive"]) / block["scale"])
        return
    # with distributed DP, plus the six survivors' shares: std z·C·√(6/5) (within 6 std errors)
    noise = decoded - plain
    expected = noise_multiplier * bound * math.sqrt(6 / 5)
    assert abs(noise.mean()) < 6 * expected / math.sqrt(D)
    assert abs(noise.std() / expected - 1) < 6 / math.sqrt(2 * D)
