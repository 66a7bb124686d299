"""The edge worker's FL round: training matches the platform's client call bit for bit, and the
chunked upload resumes after a failure, resends a chunk refused for its checksum, and ends with
the documented codes (against an in-memory server that follows the upload protocol)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ccgsc_worker import abi
from ccgsc_worker.training import METRICS, RoundTrainer, control_correction, scaffold_body
from ccgsc_worker.transfer import Response, RoundError, upload_update
from jobs.federated.client import TrainConfig, client_train, load_training_kernel
from jobs.fl_shards import decode_shard, encode_shard
from jobs.services.fl_data import partition_shards

BUILD = Path(__file__).resolve().parents[2] / "wasm" / "build"
pytestmark = pytest.mark.skipif(
    not (BUILD / "logreg.wasm").exists(), reason="the WASM kernels are not built"
)
SIZES = [64, 10]
D = abi.dense_param_count(SIZES)


class FakeServer:
    """Weights, one shard and the upload protocol, in memory; failures on demand."""

    def __init__(self, weights: bytes, shard: bytes) -> None:
        self.files = {"/w.f32": weights, "/s.bin": shard}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.log: list[str] = []
        self.drop_put: set[int] = set()  # chunk indexes whose first PUT fails in transit
        self.corrupt_put: set[int] = set()  # chunk indexes whose first PUT arrives damaged
        self.create_answer: Response | None = None
        self.unreachable = 0  # the next requests that find nobody listening (a restart)

    def request(self, method: str, path: str, *, body=None, headers=None) -> Response:  # noqa: ANN001
        if self.unreachable:
            self.unreachable -= 1
            self.log.append(f"refused {method} {path}")
            raise ConnectionRefusedError("connection refused")
        self.log.append(f"{method} {path}")
        if method == "GET" and path in self.files:
            return Response(200, self.files[path])
        if method == "POST" and path == "/fl/uploads/":
            if self.create_answer is not None:
                return self.create_answer
            spec = json.loads(body)
            upload = self.uploads.setdefault(
                "u1", {"spec": spec, "chunks": {}, "status": "receiving"}
            )
            assert upload["spec"] == spec  # a resume posts the same values
            return Response(201, json.dumps(self._state()).encode())
        if method == "PUT":
            index = int(path.rsplit("/", 1)[1])
            if index in self.drop_put:
                self.drop_put.discard(index)
                raise ConnectionResetError("connection lost")
            data = bytes(body)
            if index in self.corrupt_put:
                self.corrupt_put.discard(index)
                data = b"\xff" + data[1:]
            if hashlib.sha256(data).hexdigest() != headers["X-Chunk-SHA256"]:
                return _error(400, "checksum_mismatch")
            self.uploads["u1"]["chunks"][index] = data
            return Response(200, b'{"stored": true}')
        if method == "POST" and path.endswith("/complete"):
            upload = self.uploads["u1"]
            if len(upload["chunks"]) < self._state()["chunk_count"]:
                return _error(400, "incomplete")
            if hashlib.sha256(self.body()).hexdigest() != upload["spec"]["sha256"]:
                return Response(422, b'{"rejection": {"code": "sha256_mismatch"}}')
            return Response(202, json.dumps(self._state()).encode())
        return _error(404, "not_found")

    def _state(self) -> dict[str, Any]:
        upload = self.uploads["u1"]
        size = upload["spec"]["chunk_size"]
        return {
            "upload": "u1",
            "chunk_count": -(-upload["spec"]["total_bytes"] // size),
            "chunks_received": sorted(upload["chunks"]),
        }

    def body(self) -> bytes:
        chunks = self.uploads["u1"]["chunks"]
        return b"".join(chunks[i] for i in sorted(chunks))


def _error(status: int, code: str) -> Response:
    return Response(status, json.dumps({"error": {"code": code, "message": code}}).encode())


@pytest.fixture(scope="module")
def digits_shard() -> bytes:
    x, y, classes = partition_shards(
        dataset="digits", partition="shards", clients=2, seed=3, alpha=None, per_client=2
    )[1]
    return encode_shard(x, y, classes)


def _invite(weights: bytes, *, epochs: int = 1, momentum: float = 0.0) -> dict[str, Any]:
    wasm = (BUILD / "logreg.wasm").read_bytes()
    return {
        "participation": 7,
        "seed": "99",
        "model": {
            "version": 4,
            "sha256": hashlib.sha256(weights).hexdigest(),
            "url": "/w.f32",
            "parameters": D,
            "sizes": SIZES,
        },
        "kernel": {"name": "logreg", "sha256": hashlib.sha256(wasm).hexdigest(), "url": "/k"},
        "hyperparameters": {
            "epochs": epochs,
            "batch_size": 10,
            "learning_rate": 0.1,
            "momentum": momentum,
            "proximal_mu": 0.0,
        },
        "data": {"source": "public_partition", "private": False, "url": "/s.bin"},
        "upload": {"url": "/fl/uploads/", "chunk_bytes": 1024, "total_bytes": 32 + 4 * D},
    }


def _run(server: FakeServer, invite: dict[str, Any], deadline: float = 1e9) -> tuple[str, str]:
    wasm = (BUILD / "logreg.wasm").read_bytes()
    return RoundTrainer(server, clock=lambda: 0.0).run(invite, wasm, deadline)  # type: ignore[arg-type]


def _weights() -> bytes:
    return np.random.default_rng(0).normal(0, 0.01, D).astype("<f4").tobytes()


@pytest.mark.parametrize(("epochs", "momentum"), [(1, 0.0), (2, 0.9)])
def test_the_uploaded_update_is_the_platform_client_call_bit_for_bit(
    digits_shard: bytes, epochs: int, momentum: float
) -> None:
    # given a round of E epochs on a public shard
    weights = _weights()
    server = FakeServer(weights, digits_shard)
    # when the edge worker trains and uploads it
    outcome = _run(server, _invite(weights, epochs=epochs, momentum=momentum))
    # then the body is the metrics header and the update the simulator's client call computes
    assert outcome == ("uploaded", "")
    body = server.body()
    x, y, _ = decode_shard(digits_shard)
    expected = client_train(
        load_training_kernel("logreg"),
        sizes=tuple(SIZES),
        weights=np.frombuffer(weights, "<f4"),
        x=x,
        y=y,
        config=TrainConfig(epochs=epochs, batch_size=10, learning_rate=0.1, momentum=momentum),
        seed=99,
    )
    assert body[32:] == expected.update.astype("<f4").tobytes()
    status, samples, _loss, _correct, d, norm = METRICS.unpack(body[:32])
    assert (status, samples, d) == (0, len(y), D)
    assert norm == pytest.approx(expected.update_l2, rel=1e-6)
    assert len(server.uploads["u1"]["chunks"]) == -(-(32 + 4 * D) // 1024)


def test_a_chunk_lost_in_transit_is_sent_again_after_asking_for_the_state(
    digits_shard: bytes,
) -> None:
    weights = _weights()
    server = FakeServer(weights, digits_shard)
    server.drop_put = {1}
    assert _run(server, _invite(weights)) == ("uploaded", "")
    creates = [line for line in server.log if line == "POST /fl/uploads/"]
    puts = [line for line in server.log if line.startswith("PUT")]
    assert len(creates) == 2  # the second create answers the state: chunk 0 is not sent again
    assert puts.count("PUT /fl/uploads/u1/chunks/0") == 1
    assert puts.count("PUT /fl/uploads/u1/chunks/1") == 2
    assert server.log[-1] == "POST /fl/uploads/u1/complete"


def test_a_chunk_refused_for_its_checksum_is_resent(digits_shard: bytes) -> None:
    weights = _weights()
    server = FakeServer(weights, digits_shard)
    server.corrupt_put = {2}
    assert _run(server, _invite(weights)) == ("uploaded", "")
    assert server.log.count("PUT /fl/uploads/u1/chunks/2") == 2
    assert server.log.count("POST /fl/uploads/") == 1


def test_an_upload_rate_limit_paces_the_chunks_and_delays_completion(
    digits_shard: bytes,
) -> None:
    # given a worker limited to 1,000 bytes/s on a clock that moves only when it sleeps
    weights = _weights()
    server = FakeServer(weights, digits_shard)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    def logged_put(method: str, path: str, **kwargs: Any) -> Response:
        server.log.append(f"t={now[0]:.3f}")
        return FakeServer.request(server, method, path, **kwargs)

    server.request = logged_put  # type: ignore[method-assign]
    body = b"\x01" * (32 + 4 * D)  # 2,632 bytes: chunks of 1,024, 1,024 and 584
    # when it uploads
    outcome = upload_update(
        server,  # type: ignore[arg-type]
        url="/fl/uploads/",
        participation=7,
        base_version=4,
        body=body,
        chunk_bytes=1024,
        time_left=lambda: 1e9,
        sleep=sleep,
        max_bytes_per_second=1000,
        clock=lambda: now[0],
    )
    # then each chunk waits for the bytes before it, and the upload completes after 2.632 s
    assert outcome == ("uploaded", "")
    assert slept == [1.024, 1.024, 0.584]
    assert [line for line in server.log if line.startswith(("t=", "PUT", "POST"))] == [
        "t=0.000", "POST /fl/uploads/",
        "t=0.000", "PUT /fl/uploads/u1/chunks/0",
        "t=1.024", "PUT /fl/uploads/u1/chunks/1",
        "t=2.048", "PUT /fl/uploads/u1/chunks/2",
        "t=2.632", "POST /fl/uploads/u1/complete",
    ]  # fmt: skip
    assert server.body() == body


def _upload(server: FakeServer, body: bytes, slept: list[float]) -> tuple[str, str]:
    return upload_update(
        server,  # type: ignore[arg-type]
        url="/fl/uploads/",
        participation=7,
        base_version=4,
        body=body,
        chunk_bytes=1024,
        time_left=lambda: 60.0 - sum(slept),
        sleep=slept.append,
    )


def test_an_upload_outlives_a_server_restart_and_sends_only_the_missing_chunks(
    digits_shard: bytes,
) -> None:
    # given an upload whose server goes away after the first chunk, for twelve attempts
    server = FakeServer(_weights(), digits_shard)
    body = b"\x02" * (32 + 4 * D)
    original = server.request

    def going_away(method: str, path: str, **kwargs: Any) -> Response:
        if path.endswith("/chunks/1") and not server.unreachable and "gone" not in server.log:
            server.log.append("gone")
            server.unreachable = 12
        return original(method, path, **kwargs)

    server.request = going_away  # type: ignore[method-assign]
    slept: list[float] = []
    # when it retries
    outcome = _upload(server, body, slept)
    # then it waited with a capped back-off until the server was back, and resumed
    assert outcome == ("uploaded", "")
    assert max(slept) == 5.0
    assert server.body() == body
    puts = [line for line in server.log if line.startswith("PUT")]
    assert puts.count("PUT /fl/uploads/u1/chunks/0") == 1


def test_an_upload_the_server_keeps_failing_gives_up_after_five_failures(
    digits_shard: bytes,
) -> None:
    server = FakeServer(_weights(), digits_shard)
    server.create_answer = _error(503, "unavailable")
    slept: list[float] = []
    with pytest.raises(RoundError) as error:
        _upload(server, b"\x02" * (32 + 4 * D), slept)
    assert error.value.code == "upload_failed"
    assert server.log.count("POST /fl/uploads/") == 5


def test_a_closed_round_makes_the_update_late(digits_shard: bytes) -> None:
    weights = _weights()
    server = FakeServer(weights, digits_shard)
    server.create_answer = _error(409, "round_closed")
    assert _run(server, _invite(weights))[0] == "late"
    assert not any(line.startswith("PUT") for line in server.log)


def test_a_fetch_refused_because_the_job_stopped_makes_the_round_late(digits_shard: bytes) -> None:
    # given a job paused while this worker fetches its shard: the server answers 409 round_closed
    weights = _weights()
    server = FakeServer(weights, digits_shard)
    answer = server.request
    server.request = lambda method, path, **kw: (  # type: ignore[method-assign]
        _error(409, "round_closed") if path == "/s.bin" else answer(method, path, **kw)
    )
    # then the round ends late, not fetch_failed, and nothing is uploaded
    assert _run(server, _invite(weights)) == ("late", "the round closed before its data arrived")
    assert not server.uploads
    # while a shard that is not there stays a failed fetch
    missing = FakeServer(weights, digits_shard)
    del missing.files["/s.bin"]
    assert _run(missing, _invite(weights))[0] == "fetch_failed"


def test_weights_that_do_not_match_their_hash_are_not_trained(digits_shard: bytes) -> None:
    weights = _weights()
    server = FakeServer(weights, digits_shard)
    server.files["/w.f32"] = weights[:-4] + struct.pack("<f", 1.0)
    assert _run(server, _invite(weights))[0] == "hash_mismatch"
    assert "GET /s.bin" not in server.log
    assert not server.uploads


def test_a_passed_deadline_ends_the_round_without_an_upload(digits_shard: bytes) -> None:
    weights = _weights()
    server = FakeServer(weights, digits_shard)
    assert _run(server, _invite(weights), deadline=-1.0)[0] == "deadline"
    assert not server.uploads


def test_private_data_is_never_fetched(digits_shard: bytes) -> None:
    weights = _weights()
    server = FakeServer(weights, digits_shard)
    invite = _invite(weights)
    invite["data"] = {"source": "contributor_local", "private": True}
    assert _run(server, invite)[0] == "no_local_data"
    assert server.log == []


class WasmSource:
    """The kernel source the driver asks: the built module, whatever the URL."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def get(self, ref) -> bytes:  # noqa: ANN001
        self.asked.append(ref.sha256)
        return (BUILD / "logreg.wasm").read_bytes()


async def test_the_driver_trains_an_invite_off_the_loop_and_reports_its_end(
    digits_shard: bytes,
) -> None:
    # given a connected edge worker whose HTTP goes to the in-memory server
    from tests.edge_worker.test_edge_client import connected, echo_executor, inline

    events: list[tuple[str, dict[str, Any]]] = []
    worker = inline(echo_executor, on_event=lambda name, info: events.append((name, info)))
    weights = _weights()
    server = FakeServer(weights, digits_shard)
    worker.trainer = RoundTrainer(server)  # type: ignore[arg-type]
    worker.kernel_source = WasmSource()
    transport = await connected(worker)
    # when the server invites it to a round
    invite = {
        "v": 1,
        "type": "round_invite",
        "job": "00000000-0000-4000-8000-0000000000f1",
        "round": 1,
        **_invite(weights),
        "deadline_ms": 60_000,
    }
    await worker.handle_message(json.dumps(invite))
    assert worker.session.rounds == [7]
    # then it trains, uploads, and the session forgets the round; nothing goes on the socket
    assert await worker.wait_idle(timeout=60)
    assert ("round_finished", {"participation": 7, "outcome": "uploaded", "message": ""}) in events
    assert server.log[-1] == "POST /fl/uploads/u1/complete"
    assert worker.kernel_source.asked == [invite["kernel"]["sha256"]]
    assert not [m for m in transport.sent if "round" in str(m)]


def test_a_graceful_stop_waits_for_the_round_being_uploaded() -> None:
    from ccgsc_worker import protocol as proto
    from ccgsc_worker.session import Session

    # given a session training round 7
    session = Session(
        concurrency=1,
        build_hello=lambda slots, resume: proto.hello(
            "t" * 40, client_version="1", capabilities={}, slots=slots, resume=resume
        ),
    )
    session.start()
    session.opened()
    session.message(
        json.dumps(
            {
                "v": 1,
                "type": "welcome",
                "worker": "00000000-0000-4000-8000-0000000000b1",
                "contributor": "00000000-0000-4000-8000-0000000000c1",
                "heartbeat_ms": 10_000,
                "limits": {"max_json_bytes": 1, "max_result_bytes": 1, "messages_per_second": 1},
                "outstanding": [],
            }
        )
    )
    invite = {
        "v": 1,
        "type": "round_invite",
        "job": "00000000-0000-4000-8000-0000000000f1",
        "round": 1,
        **_invite(b"\0" * 4 * D),
        "deadline_ms": 1000,
    }
    assert [e["do"] for e in session.message(json.dumps(invite))] == ["notify", "train"]
    # when the worker is asked to stop, it keeps going until the round ends
    assert not [e for e in session.stop() if e["do"] == "end"]
    effects = session.round_finished(7, "uploaded")
    # then it ends
    assert [e["do"] for e in effects] == ["notify", "heartbeat", "close", "end"]


def test_scaffold_appends_the_control_delta_of_option_two() -> None:
    # Given: a body of 7 samples trained for E = 2 epochs of B = 3 (K = 2·3 = 6 steps, η = 0.5)
    update = np.array([0.6, -1.2, 0.0], np.float32)
    body = METRICS.pack(0, 7, 1.0, 3, 3, 1.0) + update.tobytes()
    control = np.array([0.25, 0.0, -1.0], np.float32)
    # When
    sent = scaffold_body(
        body,
        control=control.tobytes(),
        hyperparameters={"epochs": 2, "batch_size": 3, "learning_rate": 0.5},
    )
    # Then: [header ‖ Δy ‖ Δc] with Δc = −c − Δy / (K·η) = −c − Δy / 3
    assert sent[: len(body)] == body
    delta = np.frombuffer(sent[len(body) :], "<f4")
    np.testing.assert_allclose(delta, [-0.45, 0.4, 1.0], rtol=1e-6)


def test_the_training_correction_is_c_minus_the_clients_own() -> None:
    control = np.array([1.0, 2.0], np.float32).tobytes()
    mine = np.array([0.5, -1.0], np.float32).tobytes()
    assert np.frombuffer(control_correction(control, mine), "<f4").tolist() == [0.5, 3.0]
    assert control_correction(control, None) == control  # no cᵢ held: zeros


def test_topk_keeps_the_residual_per_job_only_after_an_accepted_upload(
    digits_shard: bytes,
) -> None:
    # given a top-k invite (k = 65 of 650) and one trainer kept across rounds, as the CLI keeps it
    weights = _weights()
    invite = _invite(weights) | {"job": "j1"}
    invite["hyperparameters"] = invite["hyperparameters"] | {
        "compression": {"scheme": "topk", "k": 65}
    }
    wasm = (BUILD / "logreg.wasm").read_bytes()
    # when the first upload is refused as late
    server = FakeServer(weights, digits_shard)
    server.create_answer = _error(409, "round_closed")
    trainer = RoundTrainer(server, clock=lambda: 0.0)  # type: ignore[arg-type]
    assert trainer.run(invite, wasm, 1e9)[0] == "late"
    # then no residual is kept
    assert not np.any(trainer.residuals.residual("j1", D))
    # when the same round is trained again and uploaded
    server = FakeServer(weights, digits_shard)
    trainer.http = server  # type: ignore[assignment]
    assert trainer.run(invite, wasm, 1e9) == ("uploaded", "")
    # then the upload is the header and the 65 largest (index, value) pairs, and the rest is the
    # job's residual: sent + residual = the dense update, exactly
    body = server.body()
    assert len(body) == 32 + 16 + 8 * 65
    dense = trainer.train(_invite(weights), wasm, 1e9)
    update = np.frombuffer(dense, "<f4", offset=32)
    indices = np.frombuffer(body, "<u4", count=65, offset=48)
    values = np.frombuffer(body, "<f4", count=65, offset=48 + 4 * 65)
    residual = trainer.residuals.residual("j1", D)
    sent = np.zeros(D, np.float32)
    sent[indices] = values
    np.testing.assert_array_equal(sent + residual, update)
    assert not np.any(residual[indices])
    assert np.abs(values).min() >= np.abs(residual).max()  # the 65 largest were sent
    assert not np.any(trainer.residuals.residual("another job", D))
