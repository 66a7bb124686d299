"""The worker and director consumers, driven through Channels' WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from types import SimpleNamespace

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection

from ccgsc_site.asgi import application
from ccgsc_worker import abi
from ccgsc_worker.protocol import encode_result_frame
from jobs import director, dispatch, selectors
from jobs.models import Assignment, AssignmentStatus, JobStatus
from tests.jobs.helpers import HELLO, _runner, fc_job

pytestmark = pytest.mark.django_db(transaction=True)

# Group commit's prefetch and flushes run on PostgreSQL deployments only (SQLite, the embedded
# default, claims per item without a prefetch).
GROUP_COMMIT = pytest.mark.services


async def _connect(path: str = "/ws/edge/") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        application, path, headers=[(b"origin", b"http://127.0.0.1")]
    )
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def _hello(communicator, token: str, **overrides) -> dict:  # noqa: ANN001
    await communicator.send_to(text_data=json.dumps({**HELLO, "token": token, **overrides}))
    return await communicator.receive_json_from(timeout=5)


def _create_job(tenant, owner, kernel, *, tasks: int = 2):  # noqa: ANN001, ANN202
    """A started job of ``tasks`` tasks of 10,000 numbers, quorum 1."""
    return fc_job(tenant, owner, kernel, tasks=tasks, chunk_size=10_000, quorum=1, seed=3)


async def test_invalid_messages_get_clear_errors_and_change_nothing():
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    communicator = await _connect()
    # before hello
    await communicator.send_to(text_data=json.dumps({"v": 1, "type": "ping"}))
    assert (await communicator.receive_json_from())["message"] == "send 'hello' first"
    welcome = await _hello(communicator, token)
    assert welcome["type"] == "welcome"
    cases = [
        ("not json", "not JSON"),
        (json.dumps([1, 2]), "a message must be a JSON object"),
        (
            json.dumps({"v": 1, "type": "capacity", "slots": 99}),
            "99 is greater than the maximum of 64",
        ),
        (
            json.dumps({"v": 1, "type": "capacity", "slots": 1, "extra": True}),
            "Additional properties",
        ),
        (json.dumps({"v": 1, "type": "teleport"}), "unknown message type"),
        ('{"v": 1, "type": "progress", "assignment": "x", "fraction": NaN}', "NaN is not allowed"),
        (json.dumps({"v": 1, "type": "result", "assignment": "x", "sha256": "0"}), "binary frame"),
    ]
    for frame, expected in cases:
        await communicator.send_to(text_data=frame)
        reply = await communicator.receive_json_from()
        assert reply["type"] == "error", frame
        assert expected in reply["message"], (frame, reply)
    await communicator.send_to(bytes_data=b"\x00\x00\x00\x05{bad}")
    assert (await communicator.receive_json_from())["code"] == "invalid_message"
    # a frame over its limit is answered, then the connection is closed with 4009
    await communicator.send_to(text_data="x" * 20_000)
    reply = await communicator.receive_json_from()
    assert (reply["code"], "limited to" in reply["message"]) == ("too_large", True)
    assert (await communicator.receive_output())["code"] == 4009


async def test_bad_token_closes_with_4001():
    communicator = await _connect()
    reply = await _hello(communicator, "not-a-real-token-at-all")
    assert reply["code"] == "unauthorized"
    assert (await communicator.receive_output())["code"] == 4001


async def test_wrong_protocol_version_closes_with_4002():
    communicator = await _connect()
    await communicator.send_to(text_data=json.dumps({**HELLO, "v": 2}))
    assert (await communicator.receive_json_from())["code"] == "protocol_version"
    assert (await communicator.receive_output())["code"] == 4002


async def test_rate_limit_answers_then_drops(settings):
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    communicator = await _connect()
    await _hello(communicator, token, slots=0)
    replies = []
    for _ in range(130):
        await communicator.send_to(text_data=json.dumps({"v": 1, "type": "ping"}))
    for _ in range(130):
        replies.append((await communicator.receive_json_from())["type"])
    assert replies.count("pong") >= 99
    assert "error" in replies
    await communicator.disconnect()


async def test_worker_gets_pushed_work_and_results_are_acked(tenant, owner, kernels):
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    communicator = await _connect()
    welcome = await _hello(communicator, token, slots=1)
    assert welcome["outstanding"] == []
    # a job created while the worker idles is pushed to it
    job = await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"])
    assign = await communicator.receive_json_from(timeout=5)
    assert assign["type"] == "assign"
    assert assign["kernel"]["url"] == f"/kernels/{kernels['prime_count'].sha256}.wasm"
    assert assign["input"] == {"lo": "1", "hi": "10001", "seed": "3", "params": []}
    # heartbeat
    await communicator.send_to(
        text_data=json.dumps(
            {"v": 1, "type": "progress", "assignment": assign["assignment"], "fraction": 0.5}
        )
    )
    runner = await sync_to_async(_runner)(kernels["prime_count"].sha256)
    output = runner.run(abi.encode_input(1, 10_001, 3, []))
    await communicator.send_to(bytes_data=encode_result_frame(assign["assignment"], output, 5))
    messages = [await communicator.receive_json_from(timeout=5) for _ in range(3)]
    kinds = sorted(m["type"] for m in messages)
    assert kinds == ["ack", "assign", "credit"]
    ack = next(m for m in messages if m["type"] == "ack")
    assert ack == {"v": 1, "type": "ack", "assignment": assign["assignment"], "status": "accepted"}
    credit = next(m for m in messages if m["type"] == "credit")
    assert credit["validated"] == 1
    # replaying the same result is acknowledged as a duplicate
    await communicator.send_to(bytes_data=encode_result_frame(assign["assignment"], output, 5))
    assert (await communicator.receive_json_from(timeout=5))["status"] == "duplicate"
    second = next(m for m in messages if m["type"] == "assign")
    output2 = runner.run(
        abi.encode_input(int(second["input"]["lo"]), int(second["input"]["hi"]), 3, [])
    )
    await communicator.send_to(bytes_data=encode_result_frame(second["assignment"], output2, 5))
    await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()
    await sync_to_async(job.refresh_from_db)()
    assert job.status in (JobStatus.REDUCING, JobStatus.COMPLETED)
    assert job.tasks_validated == 2


async def test_result_with_a_wrong_hash_is_refused(tenant, owner, kernels):
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    communicator = await _connect()
    await _hello(communicator, token, slots=1)
    await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"])
    assign = await communicator.receive_json_from(timeout=5)
    header = json.dumps(
        {
            "v": 1,
            "type": "result",
            "assignment": assign["assignment"],
            "sha256": hashlib.sha256(b"other").hexdigest(),
        }
    ).encode()
    await communicator.send_to(bytes_data=len(header).to_bytes(4, "big") + header + b"12345678")
    reply = await communicator.receive_json_from(timeout=5)
    while reply["type"] == "assign":  # the prefetched next task may come first
        reply = await communicator.receive_json_from(timeout=5)
    assert reply["code"] == "invalid_result"
    status = await sync_to_async(
        lambda: Assignment.objects.unscoped().get(pk=assign["assignment"]).status
    )()
    assert status == AssignmentStatus.ASSIGNED
    await communicator.disconnect()


@GROUP_COMMIT
async def test_reconnect_with_resume_lists_outstanding_work(tenant, owner, kernels):
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    first = await _connect()
    welcome = await _hello(first, token, slots=1)
    await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"])
    assign = await first.receive_json_from(timeout=5)
    await first.disconnect()
    second = await _connect()
    again = await _hello(second, token, slots=0, resume=welcome["worker"])
    assert again["worker"] == welcome["worker"]
    # slots=1 plus the prefetched next task: both leases are still the worker's
    assert assign["assignment"] in again["outstanding"]
    assert len(again["outstanding"]) == 1 + settings.DISPATCH_PREFETCH
    await second.disconnect()


async def test_director_refuses_other_tenants_and_streams_state(
    tenant, owner, other_owner, kernels
):
    job = await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"])
    from channels.auth import login  # noqa: F401 - documents that the session carries the user

    def session_cookie(user):  # noqa: ANN001, ANN202
        from django.test import Client

        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    for user, allowed in ((other_owner, False), (owner, True)):
        cookie = await sync_to_async(session_cookie)(user)
        communicator = WebsocketCommunicator(
            application,
            f"/ws/jobs/{job.pk}/",
            headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={cookie}".encode())],
        )
        connected, _ = await communicator.connect()
        assert connected
        if not allowed:
            # accepted, then closed with 4004, so a browser sees the code (not an HTTP 403)
            assert await communicator.receive_output(timeout=5) == {
                "type": "websocket.close",
                "code": 4004,
            }
            continue
        state = await communicator.receive_json_from(timeout=5)
        assert state["type"] == "state"
        assert state["state"]["status"] == "running"
        await communicator.send_json_to({"v": 1, "type": "control", "action": "pause"})
        seen = [await communicator.receive_json_from(timeout=5) for _ in range(2)]
        assert any(m.get("type") == "state" and m["state"]["status"] == "paused" for m in seen), (
            seen
        )
        await communicator.disconnect()


async def test_foreign_origin_is_refused_for_browser_routes():
    communicator = WebsocketCommunicator(
        application, "/ws/worker/", headers=[(b"origin", b"http://evil.example")]
    )
    connected, _ = await communicator.connect()
    assert not connected


async def test_viewers_of_one_job_share_one_snapshot_per_interval(monkeypatch):
    # given a process with many viewers of one job
    calls = []

    def job_state(*, tenant, job_id):  # noqa: ANN001, ANN202
        calls.append(job_id)
        return {"job": str(job_id), "n": len(calls)}

    monkeypatch.setattr(selectors, "job_state", job_state)
    tenant, job_id = SimpleNamespace(pk=1), uuid.uuid4()
    # when a thousand of them tick in the same interval
    states = await asyncio.gather(
        *(director.job_state_shared(tenant=tenant, job_id=job_id) for _ in range(1000))
    )
    # then the snapshot was read once and every viewer got it, with the time of its read
    assert calls == [job_id]
    assert {state["n"] for _, state in states} == {1}
    assert len({read_at for read_at, _ in states}) == 1


async def _resumed_with_two_outstanding(tenant, owner, kernels):  # noqa: ANN001, ANN202
    """A worker (slots 1, so 1 + prefetch leases) that lost its socket and resumes with slots 1
    on a new one; returns (communicator, welcome, the first connection's assigns)."""
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    first = await _connect()
    welcome = await _hello(first, token, slots=1)
    await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"], tasks=8)
    held = [await first.receive_json_from(timeout=5) for _ in range(1 + settings.DISPATCH_PREFETCH)]
    await first.disconnect()
    second = await _connect()
    again = await _hello(second, token, slots=1, resume=welcome["worker"])
    return second, again, held


def _assigned_to(worker_id: str) -> set[str]:
    return {
        str(a)
        for a in Assignment.objects.unscoped()
        .filter(worker_id=worker_id, status=AssignmentStatus.ASSIGNED)
        .values_list("id", flat=True)
    }


@GROUP_COMMIT
async def test_resumed_worker_is_not_claimed_beyond_its_outstanding_leases(tenant, owner, kernels):
    # given a worker that resumes holding its slot and its prefetch
    second, again, held = await _resumed_with_two_outstanding(tenant, owner, kernels)
    assert set(again["outstanding"]) == {a["assignment"] for a in held}
    # when it says anything more, every message the hello caused has been sent before the answer
    await second.send_to(text_data=json.dumps({"v": 1, "type": "ping"}))
    # then no new assign came: its outstanding leases fill its slot and its prefetch
    assert (await second.receive_json_from(timeout=5))["type"] == "pong"
    assert await sync_to_async(_assigned_to)(again["worker"]) == set(again["outstanding"])
    # and a finished outstanding task frees exactly one place
    offer = held[0]
    runner = await sync_to_async(_runner)(offer["kernel"]["sha256"])
    output = runner.run(
        abi.encode_input(
            int(offer["input"]["lo"]),
            int(offer["input"]["hi"]),
            int(offer["input"]["seed"]),
            offer["input"]["params"],
        )
    )
    await second.send_to(bytes_data=encode_result_frame(offer["assignment"], output, 5))
    messages = {m["type"]: m for m in [await second.receive_json_from(timeout=5) for _ in range(3)]}
    assert sorted(messages) == ["ack", "assign", "credit"]  # quorum 1: validated at once
    refill = messages["assign"]
    await second.send_to(text_data=json.dumps({"v": 1, "type": "ping"}))
    assert (await second.receive_json_from(timeout=5))["type"] == "pong"
    assigned = await sync_to_async(_assigned_to)(again["worker"])
    assert assigned == {held[1]["assignment"], refill["assignment"]}
    await second.disconnect()


@GROUP_COMMIT
async def test_resumed_leases_the_worker_never_names_stop_counting(
    tenant, owner, kernels, monkeypatch
):
    # given a resumed worker that names only one of its two outstanding leases
    from jobs.consumers import WorkerConsumer

    monkeypatch.setattr(WorkerConsumer, "resume_confirm_ms", 300)
    second, again, held = await _resumed_with_two_outstanding(tenant, owner, kernels)
    kept = held[1]["assignment"]
    await second.send_to(text_data=json.dumps({"v": 1, "type": "progress", "assignment": kept}))
    # when the confirmation time passes, the unnamed lease no longer holds a place
    fresh = await second.receive_json_from(timeout=5)
    # then exactly one new task is pushed (slot 1 + prefetch 1, one still held)
    assert fresh["type"] == "assign"
    assert fresh["assignment"] not in again["outstanding"]
    await second.send_to(text_data=json.dumps({"v": 1, "type": "ping"}))
    assert (await second.receive_json_from(timeout=5))["type"] == "pong"
    assigned = await sync_to_async(_assigned_to)(again["worker"])
    # the unnamed lease itself is left to the sweeper (still assigned until it expires)
    assert assigned == {held[0]["assignment"], kept, fresh["assignment"]}
    await second.disconnect()


def _claimed_in(assignment_ids: list[str]) -> list[int]:
    """The transaction that wrote each assignment (PostgreSQL's ``xmin``: no heartbeat has
    updated them)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id::text, xmin::text::bigint FROM {Assignment._meta.db_table} "  # noqa: S608
            "WHERE id = ANY(%s::uuid[])",
            [assignment_ids],
        )
        written = dict(cursor.fetchall())
    return [written[assignment] for assignment in assignment_ids]


@GROUP_COMMIT
@pytest.mark.parametrize("job_first", [False, True], ids=["woken", "welcomed"])
async def test_a_sockets_first_claim_takes_its_slots_and_the_prefetch_follows_in_the_next_flush(
    tenant, owner, kernels, job_first
):
    # given group commit with a prefetch, and a worker of two slots that is woken by a job's
    # start or welcomed while a job runs
    assert settings.DISPATCH_GROUP_COMMIT
    assert settings.DISPATCH_PREFETCH >= 1
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    if job_first:
        await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"], tasks=8)
    communicator = await _connect()
    await _hello(communicator, token, slots=2)
    if not job_first:
        await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"], tasks=8)
    # when its assigns arrive
    assigns = [
        await communicator.receive_json_from(timeout=5)
        for _ in range(2 + settings.DISPATCH_PREFETCH)
    ]
    # then the two tasks it can start now were claimed in one transaction, and the prefetch in
    # a later one, sent after them
    assert [a["type"] for a in assigns] == ["assign"] * (2 + settings.DISPATCH_PREFETCH)
    claimed = await sync_to_async(_claimed_in)([a["assignment"] for a in assigns])
    startable, prefetched = claimed[:2], claimed[2:]
    assert len(set(startable)) == 1
    assert len(set(prefetched)) == 1
    assert prefetched[0] > startable[0]
    await communicator.disconnect()


@GROUP_COMMIT
async def test_a_woken_socket_that_got_a_task_to_start_holds_its_prefetch_claim(
    tenant, owner, kernels, settings
):
    # given group commit with a prefetch held for 30 s after a first claim, and an idle worker
    # of one slot
    assert settings.DISPATCH_GROUP_COMMIT
    settings.DISPATCH_PREFETCH = 1
    settings.DISPATCH_PREFETCH_HOLD_S = 30.0
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    communicator = await _connect()
    await _hello(communicator, token, slots=1)
    # when a job of eight tasks starts and wakes it
    await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"], tasks=8)
    # then the task it can start now comes, and its prefetch does not follow yet
    assert (await communicator.receive_json_from(timeout=5))["type"] == "assign"
    assert await communicator.receive_nothing(timeout=1)
    await communicator.disconnect()


@GROUP_COMMIT
async def test_a_woken_socket_whose_slots_are_busy_claims_its_prefetch_at_once(
    tenant, owner, kernels, settings
):
    # given a worker of one slot running the only task of a first job (its prefetch claim, not
    # held, found nothing, so it waits to be woken)
    settings.DISPATCH_PREFETCH = 1
    settings.DISPATCH_PREFETCH_HOLD_S = 0.0
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    communicator = await _connect()
    await _hello(communicator, token, slots=1)
    await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"], tasks=1)
    running = await communicator.receive_json_from(timeout=5)
    assert running["type"] == "assign"
    assert await communicator.receive_nothing(timeout=0.5)
    # when, with a prefetch hold of 30 s, a second job starts and wakes it
    settings.DISPATCH_PREFETCH_HOLD_S = 30.0
    await sync_to_async(_create_job)(tenant, owner, kernels["prime_count"], tasks=4)
    # then its prefetch comes well within the hold: nothing to start, nothing to wait for
    prefetched = await communicator.receive_json_from(timeout=10)
    assert prefetched["type"] == "assign"
    assert prefetched["job"] != running["job"]
    await communicator.disconnect()


async def test_a_consumers_messages_do_not_hop_to_the_database_thread(monkeypatch):
    """Channels' ``dispatch`` awaits ``aclose_old_connections`` (a hop to its one database
    thread) before every message; our consumers reach the database only through calls that
    close stale connections themselves, so ``GuardedConsumer`` dispatches without it. A message
    type with no handler still ends the socket through the guard."""
    import channels.consumer

    hops = []

    async def counted() -> None:
        hops.append(1)

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    _, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    communicator = await _connect()
    assert (await _hello(communicator, token, slots=0))["type"] == "welcome"
    for _ in range(5):
        await communicator.send_to(text_data=json.dumps({"v": 1, "type": "ping"}))
        assert (await communicator.receive_json_from())["type"] == "pong"
    assert hops == []
    await communicator.send_input({"type": "worker.teleport"})
    assert (await communicator.receive_json_from())["code"] == "internal_error"
    assert (await communicator.receive_output())["code"] == 4011
