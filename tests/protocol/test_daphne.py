"""The protocol's limits and error handling through a real Daphne (not the in-process
communicator): the configured per-message cap, close codes a browser can see, no 1011."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid

import pytest
from django.test import Client
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from jobs import dispatch, protocol
from jobs.models import Worker
from tests.jobs.test_consumers import _create_job
from tests.protocol.wire import DIRECTOR_BAD_FRAMES, hello, result_frame, worker_bad_frames

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ORIGIN = "http://127.0.0.1"


def _connect(server, path: str, **headers: str) -> ClientConnection:  # noqa: ANN001
    return connect(
        server.ws_url + path,
        origin=ORIGIN,
        additional_headers=headers,
        max_size=None,
        open_timeout=10,
        close_timeout=5,
    )


def _reply(socket: ClientConnection) -> dict:
    return json.loads(socket.recv(timeout=10))


def _close_code(socket: ClientConnection) -> int | None:
    """Read until the server closes; its close code, or None when it sent no close frame."""
    try:
        while True:
            socket.recv(timeout=10)
    except ConnectionClosed:
        received = socket.protocol.close_rcvd
        return received.code if received else None


def _worker(server, kind: str = "edge") -> ClientConnection:  # noqa: ANN001
    return _connect(server, "/ws/edge/" if kind == "edge" else "/ws/worker/")


def _hello(socket: ClientConnection, kind: str = "edge") -> None:
    _, token = dispatch.contributor_create_anonymous()
    socket.send(hello(token, kind, slots=0))
    assert _reply(socket)["type"] == "welcome"


def _full_frame(extra: int = 0) -> bytes:
    """A well-formed result frame of exactly MAX_RESULT_FRAME_BYTES + extra bytes."""
    header = {"v": 1, "type": "result", "assignment": str(uuid.uuid4()), "sha256": "0" * 64}
    base = len(result_frame(header))
    output = b"\x07" * (protocol.MAX_RESULT_FRAME_BYTES - base + extra)
    header["sha256"] = hashlib.sha256(output).hexdigest()
    frame = result_frame(header, output)
    assert len(frame) <= protocol.MAX_RESULT_FRAME_BYTES + extra
    return frame


def test_a_frame_just_over_the_limit_gets_4009_and_one_under_is_processed(checked_daphne):
    with _worker(checked_daphne) as socket:
        _hello(socket)
        under = _full_frame()
        assert len(under) > 1024 * 1024  # over Daphne's default cap: needs the explicit one
        socket.send(under)
        assert _reply(socket)["type"] == "ack"  # processed (an unknown assignment: discarded)
        socket.send(b"\x00" * (protocol.MAX_RESULT_FRAME_BYTES + 1))
        assert _reply(socket)["code"] == "too_large"
        assert _close_code(socket) == protocol.CLOSE_TOO_LARGE == 4009
    assert Worker.objects.filter(is_online=True).count() == 0


def test_a_frame_over_the_server_cap_is_dropped_without_a_close_code(checked_daphne):
    """Why the cap sits above every protocol limit: past it, Daphne drops the socket."""
    with _worker(checked_daphne) as socket:
        _hello(socket)
        # Daphne may drop the socket while the frame is still being written (the send then
        # fails with a reset); either way no close frame comes back.
        with contextlib.suppress(ConnectionClosed):
            socket.send(b"\x00" * (protocol.WEBSOCKET_MAX_MESSAGE_BYTES + 1))
        assert _close_code(socket) is None


@pytest.mark.parametrize("kind", ["edge", "browser"])
def test_frames_that_crashed_the_worker_routes_are_answered(checked_daphne, kind):
    with _worker(checked_daphne, kind) as socket:
        _hello(socket, kind)
        for name, frame, code in worker_bad_frames(str(uuid.uuid4())):
            socket.send(frame)
            reply = _reply(socket)
            assert (reply["type"], reply["code"]) == ("error", code), name
        socket.send(json.dumps({"v": 1, "type": "ping"}))
        assert _reply(socket)["type"] == "pong"
    _wait_until_no_worker_is_online()


def _wait_until_no_worker_is_online() -> None:
    """The server marks a worker offline when its socket closes (it learns of it shortly)."""
    deadline = time.monotonic() + 10
    while Worker.objects.filter(is_online=True).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Worker.objects.filter(is_online=True).count() == 0


def _session_cookie(user) -> str:  # noqa: ANN001
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def test_director_bad_frames_are_answered_and_non_members_see_4004(
    checked_daphne, tenant, owner, other_owner, kernels
):
    job = _create_job(tenant, owner, kernels["prime_count"])
    path = f"/ws/jobs/{job.pk}/"
    with _connect(checked_daphne, path, Cookie=_session_cookie(owner)) as socket:
        assert _reply(socket)["type"] == "state"
        for name, frame, code in DIRECTOR_BAD_FRAMES[:5]:
            socket.send(frame)
            reply = _reply(socket)
            assert (reply["type"], reply["code"]) == ("error", code), name
    # a non-member (and an anonymous visitor) completes the handshake and gets 4004, which a
    # browser can see; refusing the handshake would show it only an HTTP 403
    for headers in ({"Cookie": _session_cookie(other_owner)}, {}):
        with _connect(checked_daphne, path, **headers) as socket:
            assert _close_code(socket) == protocol.CLOSE_NOT_FOUND == 4004
