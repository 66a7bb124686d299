"""Bad frames on every WebSocket route get the documented error, never a crash (close 1011), and
leave no worker marked online. Driven in-process with Channels' WebsocketCommunicator."""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from ccgsc_site.asgi import application
from jobs import dispatch, protocol
from jobs.dispatch import flusher
from jobs.models import Worker
from tests.jobs.test_consumers import _create_job
from tests.protocol.wire import DIRECTOR_BAD_FRAMES, hello, hello_bad_frames, worker_bad_frames

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1")
ROUTES = [("/ws/edge/", "edge"), ("/ws/worker/", "browser")]


async def _open(path: str, *headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=[ORIGIN, *headers])
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def _send(communicator: WebsocketCommunicator, frame: str | bytes) -> None:
    if isinstance(frame, bytes):
        await communicator.send_to(bytes_data=frame)
    else:
        await communicator.send_to(text_data=frame)


async def _online_workers() -> int:
    return await sync_to_async(Worker.objects.filter(is_online=True).count)()


@pytest.mark.parametrize(("path", "kind"), ROUTES)
async def test_worker_routes_answer_every_bad_frame_and_stay_up(path, kind):
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    communicator = await _open(path)
    for name, frame, code in hello_bad_frames(token, kind):
        await _send(communicator, frame)
        reply = await communicator.receive_json_from(timeout=5)
        assert (reply["type"], reply["code"]) == ("error", code), name
    await communicator.send_to(text_data=hello(token, kind))
    welcome = await communicator.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome"
    for name, frame, code in worker_bad_frames(str(uuid.uuid4())):
        await _send(communicator, frame)
        reply = await communicator.receive_json_from(timeout=5)
        assert (reply["type"], reply["code"]) == ("error", code), (name, reply)
    await communicator.send_to(text_data=json.dumps({"v": 1, "type": "ping"}))
    assert (await communicator.receive_json_from(timeout=5))["type"] == "pong"
    assert await _online_workers() == 1
    await communicator.disconnect()
    assert await _online_workers() == 0


async def test_an_unexpected_failure_closes_4011_and_marks_the_worker_offline(monkeypatch):
    """The safety net: a handler that raises still ends the socket cleanly."""

    def broken(**kwargs):  # noqa: ANN003, ANN202
        raise RuntimeError("database on fire")

    monkeypatch.setattr(dispatch, "assignment_heartbeat", broken)
    # With group commit the batch fails too, and the item fails again on its own.
    monkeypatch.setattr(flusher, "dispatch_batch", broken)
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    communicator = await _open("/ws/edge/")
    await communicator.send_to(text_data=hello(token))
    await communicator.receive_json_from(timeout=5)
    assert await _online_workers() == 1
    progress = {"v": 1, "type": "progress", "assignment": str(uuid.uuid4())}
    await communicator.send_to(text_data=json.dumps(progress))
    reply = await communicator.receive_json_from(timeout=5)
    assert (reply["code"], reply["ref"]) == ("internal_error", None)
    assert (await communicator.receive_output(timeout=5))["code"] == protocol.CLOSE_INTERNAL_ERROR
    assert await _online_workers() == 0


async def test_oversized_binary_frame_is_answered_then_closed_with_4009():
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    communicator = await _open("/ws/edge/")
    await communicator.send_to(text_data=hello(token))
    await communicator.receive_json_from(timeout=5)
    await communicator.send_to(bytes_data=b"\x00" * (protocol.MAX_RESULT_FRAME_BYTES + 1))
    assert (await communicator.receive_json_from(timeout=5))["code"] == "too_large"
    assert (await communicator.receive_output(timeout=5))["code"] == protocol.CLOSE_TOO_LARGE
    assert await _online_workers() == 0


def _session_cookie(user) -> bytes:  # noqa: ANN001
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def test_director_answers_every_bad_frame_and_stays_up(tenant, owner, kernels):
    job = await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"])
    cookie = await sync_to_async(_session_cookie)(owner)
    burst = protocol.DIRECTOR_CONTROL_BURST
    # a fresh connection per burst of frames, so the control throttle does not interfere
    for start in range(0, len(DIRECTOR_BAD_FRAMES), burst):
        communicator = await _open(f"/ws/jobs/{job.pk}/", (b"cookie", cookie))
        assert (await communicator.receive_json_from(timeout=5))["type"] == "state"
        for name, frame, code in DIRECTOR_BAD_FRAMES[start : start + burst]:
            await _send(communicator, frame)
            reply = await communicator.receive_json_from(timeout=5)
            assert reply == {"v": 1, "type": "error", "code": code, "message": reply["message"]}, (
                name
            )
        # the bucket is empty after a full burst: the next frame is dropped with rate_limited
        if len(DIRECTOR_BAD_FRAMES[start : start + burst]) == burst:
            await _send(communicator, DIRECTOR_BAD_FRAMES[0][1])
            assert (await communicator.receive_json_from(timeout=5))["code"] == "rate_limited"
        await communicator.disconnect()


async def test_director_throttles_controls_and_closes_a_flood(tenant, owner, kernels):
    job = await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"])
    cookie = await sync_to_async(_session_cookie)(owner)
    communicator = await _open(f"/ws/jobs/{job.pk}/", (b"cookie", cookie))
    await communicator.receive_json_from(timeout=5)
    flood = protocol.DIRECTOR_CONTROL_BURST + protocol.DIRECTOR_MAX_RATE_VIOLATIONS + 1
    control = json.dumps({"v": 1, "type": "control", "action": "resume"})
    for _ in range(flood):
        await communicator.send_to(text_data=control)
    codes = []
    while True:
        output = await communicator.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            break
        message = json.loads(output["text"])
        if message["type"] == "error":
            codes.append(message["code"])
    assert output["code"] == protocol.CLOSE_RATE_LIMITED
    assert codes.count("rate_limited") == protocol.DIRECTOR_MAX_RATE_VIOLATIONS
    assert codes.count("refused") <= protocol.DIRECTOR_CONTROL_BURST


async def test_director_accepts_then_closes_4004_for_non_members_and_anonymous(
    tenant, owner, other_owner, kernels
):
    job = await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"])
    cookie = await sync_to_async(_session_cookie)(other_owner)
    for headers in ([(b"cookie", cookie)], []):
        communicator = await _open(f"/ws/jobs/{job.pk}/", *headers)
        output = await communicator.receive_output(timeout=5)
        assert output == {"type": "websocket.close", "code": protocol.CLOSE_NOT_FOUND}
