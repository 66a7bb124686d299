"""The browser client (static/worker_frontend/secagg*.js, in Node and in Chromium) against the
Python one: byte-identical primitives and client messages, and a round mixing both kinds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ccgsc_worker.skellam import skellam_share
from jobs.secagg import RoundConfig, SecAggClient, scale_for
from jobs.secagg import primitives as p
from jobs.secagg.encoding import encode
from jobs.secagg.graph import neighbour_count, neighbours
from jobs.secagg.simulate import run_round
from tests.static_site import StaticSite

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("js_client.mjs")
NODE = shutil.which("node")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"]


class NodeBridge:
    """One Node process hosting any number of JS clients, spoken to in JSON lines."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv: node and our own script
            [NODE, str(SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, op: str, **fields) -> dict:
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


class ChromiumBridge:
    """The same requests as NodeBridge, answered by secagg*.js in a headless Chromium page
    (a secure context on 127.0.0.1, so WebCrypto is available)."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        # the worker page's modules and the test handlers, nothing else (127.0.0.1 is a secure context)
        self.site = StaticSite(
            "<!doctype html><title>secagg</title>",
            {
                "/static/worker_frontend/": ROOT / "static" / "worker_frontend",
                "/tests/secagg/": ROOT / "tests" / "secagg",
            },
        )
        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        self.page = self.browser.new_page()
        self.page.goto(self.site.url)

    def call(self, op: str, **fields) -> dict:
        answer = self.page.evaluate(
            """async ([op, request]) => {
                const { handlers } = await import("/tests/secagg/js_handlers.mjs");
                try {
                    return { ok: true, ...(await handlers[op](request)) };
                } catch (error) {
                    return { ok: false, error: `${error.name}: ${error.message}` };
                }
            }""",
            [op, fields],
        )
        if not answer.pop("ok"):
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        self.browser.close()
        self.playwright.stop()
        self.site.close()


@pytest.fixture(params=["node", pytest.param("chromium", marks=pytest.mark.browser)])
def js(request):
    """A JS runtime running secagg*.js: Node 20, and Debian's Chromium."""
    if request.param == "node" and NODE is None:
        pytest.skip("needs Node 20")
    bridge = NodeBridge() if request.param == "node" else ChromiumBridge()
    yield bridge
    bridge.close()


def _config_json(config: RoundConfig) -> dict:
    return {
        "job": config.job,
        "round_number": config.round_number,
        "session_id": config.session_id.hex(),
        "graph_seed": config.graph_seed.hex(),
        "client_ids": list(config.client_ids),
        "dimension": config.dimension,
        "threshold": config.threshold,
    }


class JsClient:
    """A SecAggClient look-alike whose work is done by secagg.js in the Node process."""

    def __init__(self, bridge, config: RoundConfig, client_id: int, random=b""):
        self.bridge, self.client_id, self.dimension = bridge, client_id, config.dimension
        bridge.call("client", client_id=client_id, config=_config_json(config), random=random.hex())

    def advertise_keys(self) -> dict:
        a = self.bridge.call("advertise", client_id=self.client_id)
        return {
            "client_id": self.client_id,
            "cipher_public": bytes.fromhex(a["cipher_public"]),
            "mask_public": bytes.fromhex(a["mask_public"]),
        }

    def share_keys(self, public_keys) -> dict:
        keys = {str(i): {n: v.hex() for n, v in k.items()} for i, k in public_keys.items()}
        a = self.bridge.call("share", client_id=self.client_id, public_keys=keys)
        cts = {int(i): bytes.fromhex(c) for i, c in a["ciphertexts"].items()}
        return {"client_id": self.client_id, "ciphertexts": cts}

    def masked_input(self, ciphertexts, encoded) -> dict:
        a = self.bridge.call(
            "masked",
            client_id=self.client_id,
            ciphertexts={str(i): c.hex() for i, c in ciphertexts.items()},
            encoded=np.asarray(encoded, "<u4").tobytes().hex(),
        )
        masked = np.frombuffer(bytes.fromhex(a["masked"]), "<u4").astype(np.uint32)
        return {"client_id": self.client_id, "masked": masked}

    def unmask(self, alive, dropped) -> dict:
        a = self.bridge.call("unmask", client_id=self.client_id, alive=alive, dropped=dropped)
        return {
            "client_id": self.client_id,
            "shares": {int(i): bytes.fromhex(v) for i, v in a["shares"].items()},
        }


def _reader(data: bytes):
    position = 0

    def read(n: int) -> bytes:
        nonlocal position
        chunk = data[position : position + n]
        assert len(chunk) == n, "fixed random bytes exhausted"
        position += n
        return chunk

    return read


def test_skellam_shares_are_the_same_integers_from_the_same_bytes(js) -> None:
    # given one fixed byte stream and variances from the inversion path (mean < 10) to the
    # rejection path at the sizes distributed DP uses
    random = np.random.default_rng(7).bytes(1 << 20)
    variances = [3.0, 19.9, 20.0, 777.0, 2.5e9, 8.1e14]
    # when the browser's sampler draws 2,000 coordinates per variance from it
    answer = js.call("skellam", random=random.hex(), variances=variances, dimension=2000)
    # then the edge worker's sampler reads the same bytes and returns the same integers
    read = _reader(random)
    used = 0

    def counted(n: int) -> bytes:
        nonlocal used
        used += n
        return read(n)

    for variance, shares in zip(variances, answer["shares"], strict=True):
        python = skellam_share(2000, variance=variance, random_bytes=counted)
        assert python.tolist() == shares
    assert used == answer["used"]


def test_primitives_are_byte_identical(js) -> None:
    # given fixed keys, ids, secrets, values and random bytes
    rng = np.random.default_rng(2026)
    fixed = {k: rng.bytes(32) for k in ("seed_a", "seed_b", "secret_a", "secret_b")}
    random = rng.bytes(4096)
    values = rng.uniform(-1.5, 1.5, 37).tolist()
    request = {
        **{k: v.hex() for k, v in fixed.items()},
        "random": random.hex(),
        "id_a": 902,
        "id_b": 17,
        "job": "jöb-7",
        "round_number": 12,
        "session_id": rng.bytes(32).hex(),
        "start": 5,
        "length": 1003,
        "xs": [17, 902, 3, 44, 2**32 - 1],
        "t": 3,
        "plaintext": rng.bytes(66).hex(),
        "values": values,
        "n_clients": 1000,
        "bound": 1.0,
        "graph_ids": list(range(1, 41)),
        "graph_seed": "00ff",
        "k": 12,
        "graph_ns": [1, 2, 3, 7, 8, 100, 128, 129, 500, 1000, 1024, 1025],
    }
    # when Node computes everything through secagg.js
    js = js.call("primitives", **request)
    # then Python computes the very same bytes
    private_a, public_a = p.keypair_from_seed(fixed["seed_a"])
    _, public_b = p.keypair_from_seed(fixed["seed_b"])
    shared = p.agree(private_a, public_b)
    info = p.derivation_info(
        label=p.LABEL_PAIR_MASK, id_a=902, id_b=17, job="jöb-7", round_number=12, phase=2
    )
    key = p.derive_key(shared=shared, session_id=bytes.fromhex(request["session_id"]), info=info)
    assert js["public_a"] == public_a.hex()
    assert js["shared"] == shared.hex()
    assert js["info"] == info.hex()
    assert js["key"] == key.hex()
    assert js["mask"] == p.expand_mask(key, 1003, start=5).astype("<u4").tobytes().hex()
    read = _reader(random)
    shares = p.shamir_share([fixed["secret_a"], fixed["secret_b"]], request["xs"], 3, read)
    assert js["shares"] == [[format(int(v), "x") for v in row] for row in shares]
    assert int(js["reconstructed"], 16) == int.from_bytes(fixed["secret_a"], "big")
    ciphertext = p.encrypt_shares(
        key=key,
        sender=902,
        receiver=17,
        job="jöb-7",
        round_number=12,
        plaintext=bytes.fromhex(request["plaintext"]),
    )
    assert js["ciphertext"] == ciphertext.hex()
    scale = scale_for(n_clients=1000, bound=1.0)
    assert js["scale"] == scale
    encoded = encode(np.array(values), scale=scale, bound=1.0, random_bytes=read)
    assert js["encoded"] == encoded.astype("<u4").tobytes().hex()
    graph = neighbours(range(1, 41), b"\x00\xff", 12)
    assert {int(i): v for i, v in js["graph"].items()} == {i: sorted(v) for i, v in graph.items()}
    assert js["neighbour_counts"] == [neighbour_count(n) for n in request["graph_ns"]]


def _round_config(n: int, dimension: int) -> RoundConfig:
    return RoundConfig(
        job="mixed",
        round_number=1,
        session_id=os.urandom(32),
        graph_seed=os.urandom(16),
        client_ids=tuple(range(1, n + 1)),
        dimension=dimension,
    )


def test_js_and_python_clients_send_identical_messages(js) -> None:
    # given client 3 of a round, once in Python and once in JS, with the same random bytes
    config = _round_config(6, 50)
    random = os.urandom(8192)
    py = SecAggClient(config, 3, _reader(random))
    twin = JsClient(js, config, 3, random)
    others = {i: SecAggClient(config, i) for i in config.client_ids if i != 3}
    adverts = {i: c.advertise_keys() for i, c in others.items()}
    # when both walk through the four phases with the same server messages
    mine = py.advertise_keys()
    assert twin.advertise_keys() == mine
    adverts[3] = mine
    public = {i: {k: adverts[i][k] for k in ("cipher_public", "mask_public")} for i in adverts}
    keys = {i: public[i] for i in config.client_ids if i != 3}
    shared = py.share_keys(keys)
    assert twin.share_keys(keys) == shared
    incoming = {
        i: c.share_keys({j: public[j] for j in public if j != i}) for i, c in others.items()
    }
    to_me = {i: m["ciphertexts"][3] for i, m in incoming.items()}
    encoded = np.arange(50, dtype=np.uint32) * 7919
    masked = py.masked_input(to_me, encoded)
    js_masked = twin.masked_input(to_me, encoded)
    np.testing.assert_array_equal(js_masked["masked"], masked["masked"])
    alive, dropped = [1, 2, 3, 4, 5], [6]
    # then every message is byte for byte the same
    assert twin.unmask(alive, dropped) == py.unmask(alive, dropped)


def test_a_round_mixing_js_and_python_clients(js) -> None:
    # given 24 clients, a third of them browsers (secagg.js), the rest Python
    config = _round_config(24, 300)
    rng = np.random.default_rng(3)
    inputs = {i: rng.integers(0, 2**32, 300, dtype=np.uint32) for i in config.client_ids}
    js_clients = {i: JsClient(js, config, i) for i in config.client_ids if i % 3 == 0}
    # when one JS and one Python client drop after sharing and one of each at unmask
    drop = {3: "masked_input", 4: "masked_input", 6: "unmask", 7: "unmask"}
    total, server = run_round(config, inputs, drop_before=drop, clients=js_clients)
    # then the Python server's aggregate is the plain sum of the 22 masked-in inputs
    expected = np.zeros(300, np.uint32)
    for i in config.client_ids:
        if i not in (3, 4):
            expected += inputs[i]
    np.testing.assert_array_equal(total, expected)
    assert server.dropped == (3, 4)
