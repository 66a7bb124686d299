"""Both clients against the server, in both directions, through the one definition:
the browser's builders (run under Node) and the edge worker's produce messages the server's
validators accept; every message the server builds is accepted by both clients' parsers."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from ccgsc_worker import protocol as edge
from jobs import protocol as server

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("js_clients.mjs")
A = str(uuid.UUID(int=1))
SHA = "cd" * 32


def _node(mode: str, stdin: str = "") -> list[dict]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the browser client's tests")
    done = subprocess.run(
        [node, str(SCRIPT), mode], input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_browser_builders_pass_the_server_validators():
    built = _node("build")
    assert len(built) == 22
    for item in built:
        if "text" in item:
            message = server.parse_text(item["text"])
            assert message == json.loads(item["text"]), item["name"]
        else:
            frame = server.parse_result_frame(bytes.fromhex(item["frame_hex"]))
            assert frame.header["assignment"], item["name"]
    names = {item["name"]: item for item in built}
    hello = json.loads(names["hello_full"]["text"])
    assert hello["client"]["user_agent"] == "Mozilla/5.0(evil)"  # control characters removed
    assert json.loads(names["hello_clamped"]["text"])["resume"] is None  # "<uuid>\n" dropped
    assert json.loads(names["error_unknown_code"]["text"])["code"] == "internal"
    declined = json.loads(names["round_declined_unknown"]["text"])
    assert declined["reason"] == "unsupported"  # an unknown reason is not sent as is
    assert declined["message"] == ("linebreak" + "x" * 400)[:300]


def test_edge_builders_pass_the_server_validators():
    messages = [
        edge.hello("t" * 30, client_version="1.0", capabilities={"cores": 2}, slots=1),
        edge.hello(
            "t" * 30,
            client_version="1.0",
            capabilities={"cores": 2},
            slots=0,
            user_agent="agent\r\n\x00/1",
            resume=A,
        ),
        edge.capacity(3),
        edge.progress(A, float("inf")),
        edge.error(A, "timeout", "a\x00b" * 400),
        edge.ping(),
        edge.round_declined(7, "no_local_data", "no data\n" + "y" * 400),
    ]
    for message in messages:
        assert server.parse_text(edge.encode_text(message)) == message
    frame = server.parse_result_frame(edge.encode_result_frame(A, b"\x01" * 3, 10**9))
    assert frame.header["elapsed_ms"] == server.LIMITS["max_elapsed_ms"]


def server_messages() -> list[dict]:
    """One of every message the server builds, including edge values."""
    return [
        server.welcome(worker=A, contributor=A, heartbeat_ms=10_000, outstanding=[A, A]),
        server.welcome(worker=uuid.UUID(A), contributor=A, heartbeat_ms=1, outstanding=[]),
        json.loads(
            server.assign_text(
                assignment=A,
                job=A,
                task=0,
                kernel_name="prime_count",
                kernel_version="1.0.0",
                kernel_sha256=SHA,
                lo=0,
                hi=2**64 - 1,
                seed=2**63,
                params=[0.5, -1e300, 3],
                lease_ms=60_000,
                work_units=10**6,
            )
        ),
        *(server.ack(assignment=A, status=status) for status in sorted(server.ACK_STATUSES)),
        server.credit(validated=3, work_units=3_000_000),
        server.cancel(assignment=A, reason="lease_lost"),
        server.error(code="invalid_message", message="x" * 5000, ref="progress"),
        server.error(code="rate_limited", message="slow down"),
        server.pong(),
        server.round_invite(event=_invite_event(), kernel_sha256=SHA, deadline_ms=30_000),
        server.round_invite(
            event={**_invite_event(), "secagg": SECAGG_BLOCK}, kernel_sha256=SHA, deadline_ms=1
        ),
        *_secagg_messages(),
    ]


KEY = "A" * 43
SECAGG_BLOCK = {
    "client": 3,
    "clients": 100,
    "threshold": 8,
    "session": KEY,
    "graph_seed": KEY,
    "scale": 21474835.47,
    "bound": 1.0,
}


def _secagg_messages() -> list[dict]:
    """One of each secure-aggregation phase message, at the largest neighbourhood (k = 64)."""
    common = {"participation": 41, "round": 3}
    keys = [{"client": i, "cipher_public": KEY, "mask_public": KEY} for i in range(1, 65)]
    ciphertexts = [{"client": i, "ciphertext": "c" * 110} for i in range(1, 65)]
    return [
        server.secagg(kind="secagg_keys", fields={**common, "keys": keys}, deadline_ms=5000),
        server.secagg(
            kind="secagg_ciphertexts", fields={**common, "ciphertexts": ciphertexts}, deadline_ms=0
        ),
        server.secagg(
            kind="secagg_unmask",
            fields={**common, "alive": [1, 2, 3], "dropped": [4]},
            deadline_ms=-5,
        ),
        server.secagg(
            kind="secagg_abort", fields={**common, "reason": "below t"}, deadline_ms=None
        ),
    ]


def test_the_largest_secagg_share_message_fits_a_text_frame():
    """k ≤ 64 (2·⌈log2 n⌉ for n < 2^32), so one ciphertext per neighbour stays far below the
    text limit and no binary framing is needed for the key phases."""
    from ccgsc_worker.secagg.graph import neighbour_count
    from ccgsc_worker.secagg.wire import b64encode

    assert neighbour_count(2**32 - 1) == 64
    message = edge.secagg_share_keys(
        2**40,
        [{"client": 2**32 - 1 - i, "ciphertext": b64encode(bytes(82))} for i in range(64)],
    )
    text = edge.encode_text(message)
    assert len(text) < server.MAX_JSON_BYTES
    assert server.parse_text(text)["ciphertexts"][63]["client"] == 2**32 - 64


def _invite_event() -> dict:
    """A ``worker.round_invite`` channel event as the round service builds it."""
    return {
        "type": "worker.round_invite",
        "job": A,
        "round": 3,
        "participation": 41,
        "deadline": "2026-12-01T10:00:30+00:00",
        "seed": 2**62,
        "model": {
            "version": 2,
            "sha256": SHA,
            "url": f"/weights/{SHA}.f32",
            "kernel": "logreg",
            "sizes": [64, 10],
            "parameter_count": 650,
        },
        "hyperparameters": {
            "local_epochs": 2,
            "batch_size": 10,
            "learning_rate": 0.1,
            "client_optimizer": "sgd",
            "momentum": 0.9,
            "proximal_mu": 0.0,
            "compression": "none",
        },
        "data": {
            "source": "public_partition",
            "private": False,
            "dataset": "digits",
            "partition": "shards",
            "clients": 4,
            "dirichlet_alpha": None,
            "shards_per_client": 2,
            "client_index": 3,
            "seed": 7,
        },
        "upload": {"url": "/fl/uploads/", "chunk_bytes": 262_144, "total_bytes": 2632},
    }


def director_messages() -> list[dict]:
    """One of every message the server builds for the director."""
    state = {
        "job": A,
        "status": "running",
        "progress_percent": 12.5,
        "tasks": {"open": 1},
        "replicas": {"running": 0},
        "workers": [],
        "events": [],
    }
    return [
        server.director_state(state=state),
        server.director_event(kind="started", message="Job started", at="2026-12-01T10:00:00"),
        server.director_error(code="refused", message="no" * 1000),
    ]


def test_every_outbound_message_has_a_builder_that_passes_its_schema():
    """Outbound checks are on in tests, so building is validating."""
    assert server._check_outbound  # noqa: SLF001
    built = {("worker", m["type"]) for m in server_messages()}
    built |= {("director", m["type"]) for m in director_messages()}
    expected = {(route, kind) for route, spec in server.ROUTES.items() for kind in spec["outbound"]}
    assert built == expected
    with pytest.raises(server.OutboundMessageError):
        server.ack(assignment="not-a-uuid", status="accepted")


def test_server_messages_are_accepted_by_both_clients():
    texts = [server.encode(message) for message in server_messages()]
    for text in texts:
        message = edge.parse_server_message(text)
        if message["type"] == "assign":
            assignment = edge.decode_assign(message)
            assert (assignment.lo, assignment.hi, assignment.seed) == (0, 2**64 - 1, 2**63)
    verdicts = _node("parse", json.dumps(texts))
    assert verdicts == [{"ok": True}] * len(texts)


def test_both_clients_refuse_the_same_broken_server_messages():
    broken = [
        {"v": 1, "type": "ack", "assignment": A, "status": "maybe"},
        {"v": 1, "type": "ack", "assignment": A + "\n", "status": "accepted"},
        {"v": 1, "type": "welcome", "worker": "not-a-uuid", "heartbeat_ms": 5},
        {"v": 1, "type": "credit", "validated": -1, "work_units": 0},
        {"v": 1, "type": "credit", "validated": True, "work_units": 0},
        {"v": 1, "type": "cancel"},
        {"v": 1, "type": "teleport"},
        {"v": 2, "type": "pong"},
    ]
    texts = [json.dumps(message) for message in broken]
    for text in texts:
        with pytest.raises(edge.ProtocolError):
            edge.parse_server_message(text)
    verdicts = _node("parse", json.dumps(texts))
    assert [v["ok"] for v in verdicts] == [False] * len(texts), verdicts
