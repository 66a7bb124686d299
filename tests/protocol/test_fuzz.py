"""Fuzzing every WebSocket route (edge, browser worker, director) with random and mutated
frames: no close 1011, no server exception, only documented error and close codes, and no
worker left online after its socket closes. In-process here; a sample runs through Daphne."""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccgsc_site.asgi import application
from jobs import dispatch, protocol
from jobs.models import Worker
from tests.jobs.test_consumers import _create_job
from tests.protocol.samples import SAMPLES, json_values, mutated
from tests.protocol.wire import NESTED, hello

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1")
DOCUMENTED_CLOSES = set(protocol.CLOSE_CODES) - {protocol.CLOSE_INTERNAL_ERROR}
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _encode(message: Any) -> str | bytes:
    """A mutated message as its frame: result headers go in a binary frame."""
    text = json.dumps(message)
    if isinstance(message, dict) and message.get("type") == "result":
        raw = text.encode()
        return struct.pack(">I", len(raw)) + raw + b"\x01\x02"
    return text


def frames(route: str) -> st.SearchStrategy[str | bytes]:
    """Random frames and mutations of the route's valid inbound messages."""
    samples = SAMPLES[(route, "inbound")]
    return st.one_of(
        st.text(min_size=1, max_size=200),  # the test communicator cannot send an empty frame
        st.binary(min_size=1, max_size=200),
        st.sampled_from(samples).flatmap(mutated).map(_encode),
        json_values.map(json.dumps),
        st.sampled_from([NESTED, "x" * (protocol.MAX_JSON_BYTES + 1), " ", "null", "{}"]),
    )


async def _send(communicator: WebsocketCommunicator, frame: str | bytes) -> None:
    if isinstance(frame, bytes):
        await communicator.send_to(bytes_data=frame)
    else:
        await communicator.send_to(text_data=frame)


def _check_output(output: dict[str, Any]) -> dict[str, Any] | None:
    """Assert an output is documented; return the message it carried (None for a close)."""
    if output["type"] == "websocket.close":
        assert output.get("code") in DOCUMENTED_CLOSES, output
        return None
    assert output["type"] == "websocket.send", output
    message = json.loads(output["text"])
    if message["type"] == "error":
        assert message["code"] in protocol.SERVER_ERROR_CODES, message
    return message


async def _worker_session(path: str, kind: str, token: str, pre: list, post: list) -> None:
    communicator = WebsocketCommunicator(application, path, headers=[ORIGIN])
    connected, _ = await communicator.connect()
    assert connected
    closed = False
    try:
        for frame in [*pre, hello(token, kind), *post]:
            await _send(communicator, frame)
            # a ping after each frame marks where its answers end (pong, or "hello first")
            await communicator.send_to(text_data='{"v":1,"type":"ping"}')
            while not closed:
                message = _check_output(await communicator.receive_output(timeout=5))
                closed = message is None
                if closed or message["type"] == "pong" or message.get("ref") == "ping":
                    break
            if closed:
                break
    finally:
        if not closed:
            await communicator.disconnect()
    assert await sync_to_async(Worker.objects.filter(is_online=True).count)() == 0


@pytest.mark.parametrize(("path", "kind"), [("/ws/edge/", "edge"), ("/ws/worker/", "browser")])
def test_fuzz_worker_routes(path, kind):
    _, token = dispatch.contributor_create_anonymous()

    @FUZZ
    @given(pre=st.lists(frames("worker"), max_size=2), post=st.lists(frames("worker"), max_size=4))
    def run(pre: list, post: list) -> None:
        async_to_sync(_worker_session)(path, kind, token, pre, post)

    run()


def _is_valid_control(frame: str | bytes) -> bool:
    if isinstance(frame, bytes):
        return False
    try:
        protocol.parse_text(frame, route="director")
    except protocol.ProtocolError:
        return False
    return True


async def _director_answer(
    communicator: WebsocketCommunicator, *, valid: bool
) -> dict[str, Any] | None:
    """The director's answer to a frame. The job's state and events are pushed whenever they
    change, so such pushes may arrive first: they are documented, not answers. A valid control
    the job accepts is answered by the new state itself (pause, resume, cancel change it)."""
    for _ in range(20):
        message = _check_output(await communicator.receive_output(timeout=5))
        if message is None or message["type"] not in ("state", "event"):
            return message
        if valid and message["type"] == "state":
            return message
    raise AssertionError("no answer after 20 pushes")


def test_fuzz_director_route(tenant, owner, kernels):
    job = _create_job(tenant, owner, kernels["prime_count"])
    client = Client()
    client.force_login(owner)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    async def session(batch: list) -> None:
        communicator = WebsocketCommunicator(
            application, f"/ws/jobs/{job.pk}/", headers=[ORIGIN, (b"cookie", cookie)]
        )
        connected, _ = await communicator.connect()
        assert connected
        assert _check_output(await communicator.receive_output(timeout=5))["type"] == "state"
        try:
            for frame in batch:
                await _send(communicator, frame)
                valid = _is_valid_control(frame)
                message = await _director_answer(communicator, valid=valid)
                if message is None:
                    return
                if valid and message["type"] == "state":
                    continue  # accepted: the job's new state is the answer
                assert message["type"] == "error", message
        finally:
            await communicator.disconnect()

    @FUZZ
    @given(batch=st.lists(frames("director"), min_size=1, max_size=protocol.DIRECTOR_CONTROL_BURST))
    def run(batch: list) -> None:
        async_to_sync(session)(batch)

    run()


@pytest.mark.services
@pytest.mark.slow
def test_fuzz_through_daphne(checked_daphne):
    """A few dozen sessions through the real server (its log must stay free of tracebacks)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    _, token = dispatch.contributor_create_anonymous()

    @settings(FUZZ, max_examples=30)
    @given(
        route=st.sampled_from([("/ws/edge/", "edge"), ("/ws/worker/", "browser")]),
        batch=st.lists(frames("worker") | st.just(""), max_size=4),
    )
    def run(route: tuple[str, str], batch: list) -> None:
        path, kind = route
        with connect(
            checked_daphne.ws_url + path, origin="http://127.0.0.1", max_size=None
        ) as socket:
            try:
                for frame in [hello(token, kind), *batch]:
                    socket.send(frame)
                    socket.send('{"v":1,"type":"ping"}')
                    while True:
                        message = json.loads(socket.recv(timeout=10))
                        if message["type"] == "error":
                            assert message["code"] in protocol.SERVER_ERROR_CODES, message
                        if message["type"] == "pong":
                            break
            except ConnectionClosed:
                received = socket.protocol.close_rcvd
                assert received is not None
                assert received.code in DOCUMENTED_CLOSES
        deadline = time.monotonic() + 10  # the server learns of the close shortly after
        while Worker.objects.filter(is_online=True).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Worker.objects.filter(is_online=True).exists()

    run()
