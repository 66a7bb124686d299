"""Round invites reach the invited worker's socket as ``round_invite`` messages."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from billing.operations import balance_adjust
from ccgsc_site.asgi import application
from ccgsc_worker import protocol as edge
from jobs import dispatch
from jobs.fl_shards import training_kernel_sha256
from jobs.services.fl_rounds import round_open
from tenants.tiers import Tier
from tests.factories import ContributorFactory
from tests.jobs.fl_helpers import fl_job
from tests.jobs.helpers import HELLO

pytestmark = pytest.mark.django_db(transaction=True)


def _token() -> str:
    return dispatch.worker_token_issue(contributor=ContributorFactory())


def _core_job(tenant, owner):  # noqa: ANN001, ANN202
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return fl_job(tenant, cohort_size=1, min_reports=1, partition_clients=4, seed=5)


async def test_an_invited_edge_worker_receives_its_round_invite(tenant, owner):
    # given an edge worker online and a running FL job
    token = await sync_to_async(_token)()
    communicator = WebsocketCommunicator(application, "/ws/edge/")
    assert (await communicator.connect())[0]
    await communicator.send_to(text_data=json.dumps({**HELLO, "token": token}))
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    job = await sync_to_async(_core_job)(tenant, owner)
    # when a round opens (the job's start may have opened it already)
    invitations = await sync_to_async(round_open)(job=job)
    # then the worker is sent the invite: the pinned kernel, its shard, the upload
    text = await communicator.receive_from(timeout=5)
    message = edge.parse_server_message(text)
    assert message["type"] == "round_invite"
    assert message["job"] == str(job.pk)
    assert message["kernel"]["sha256"] == training_kernel_sha256("logreg")
    assert message["kernel"]["url"] == f"/fl/kernels/{message['kernel']['sha256']}.wasm"
    index = message["data"]["client_index"]
    assert message["data"]["url"] == f"/fl/shards/{job.pk}/{index}.bin"
    assert message["data"]["private"] is False
    assert 0 < message["deadline_ms"] <= 120_000
    if invitations:
        assert message["participation"] == invitations[0].participation_id
    await communicator.disconnect()


async def test_an_invite_the_worker_never_got_is_sent_when_it_connects(tenant, owner, monkeypatch):
    # given an open round whose invite was pushed to nobody (sent from another process, or
    # before the worker reconnected)
    from jobs.services import fl_rounds_invites

    monkeypatch.setattr(fl_rounds_invites, "SEND_INVITES", False)
    token = await sync_to_async(_token)()
    first = WebsocketCommunicator(application, "/ws/edge/")
    assert (await first.connect())[0]
    await first.send_to(text_data=json.dumps({**HELLO, "token": token}))
    welcome = await first.receive_json_from(timeout=5)
    job = await sync_to_async(_core_job)(tenant, owner)
    invitations = await sync_to_async(round_open)(job=job)
    await first.disconnect()
    assert await first.receive_nothing(timeout=0.2)
    # when the worker comes back
    again = WebsocketCommunicator(application, "/ws/edge/")
    assert (await again.connect())[0]
    await again.send_to(
        text_data=json.dumps({**HELLO, "token": token, "resume": welcome["worker"]})
    )
    assert (await again.receive_json_from(timeout=5))["type"] == "welcome"
    # then it is sent its invite, once
    message = edge.parse_server_message(await again.receive_from(timeout=5))
    assert message["type"] == "round_invite"
    participation = message["participation"]
    if invitations:
        assert participation == invitations[0].participation_id
    assert await again.receive_nothing(timeout=0.3)
    await again.disconnect()


async def _browser_connected(token: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        application, "/ws/worker/", headers=[(b"origin", b"http://127.0.0.1")]
    )
    assert (await communicator.connect())[0]
    hello = {**HELLO, "token": token, "client": {"kind": "browser", "version": "test"}}
    await communicator.send_to(text_data=json.dumps(hello))
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    return communicator


async def test_a_browser_page_that_cannot_train_declines_and_is_not_a_dropout(tenant, owner):
    # given a browser page online and a running FL job whose round invited it
    from jobs.fl_models import Participation

    token = await sync_to_async(_token)()
    page = await _browser_connected(token)
    job = await sync_to_async(_core_job)(tenant, owner)
    await sync_to_async(round_open)(job=job)
    message = edge.parse_server_message(await page.receive_from(timeout=5))
    assert message["type"] == "round_invite"
    participation = message["participation"]
    # when the page declines it (its contributor paused it)
    declined = edge.round_declined(participation, "paused", "user")
    await page.send_to(text_data=edge.encode_text(declined))
    # then the participation is declined with the reason, and the page is told nothing
    assert await page.receive_nothing(timeout=0.5)
    row = await sync_to_async(Participation.objects.unscoped().get)(pk=participation)
    assert (row.status, row.rejection_code, row.rejection_message) == ("declined", "paused", "user")
    # and a second decline, or one for a participation that is not this worker's, changes nothing
    await page.send_to(text_data=edge.encode_text(edge.round_declined(participation, "no_simd")))
    await page.send_to(
        text_data=edge.encode_text(edge.round_declined(participation + 999, "paused"))
    )
    assert await page.receive_nothing(timeout=0.5)
    row = await sync_to_async(Participation.objects.unscoped().get)(pk=participation)
    assert row.rejection_code == "paused"
    await page.disconnect()


async def test_a_malformed_decline_is_answered_with_an_error_and_changes_nothing(tenant, owner):
    # given a browser page invited to a round
    from jobs.fl_models import Participation

    token = await sync_to_async(_token)()
    page = await _browser_connected(token)
    job = await sync_to_async(_core_job)(tenant, owner)
    await sync_to_async(round_open)(job=job)
    participation = edge.parse_server_message(await page.receive_from(timeout=5))["participation"]
    # when it declines with a reason the protocol does not know
    bad = {"v": 1, "type": "round_declined", "participation": participation, "reason": "bored"}
    await page.send_to(text_data=json.dumps(bad))
    # then it gets an invalid_message error and the participation is still invited
    answer = await page.receive_json_from(timeout=5)
    assert (answer["type"], answer["code"], answer["ref"]) == (
        "error",
        "invalid_message",
        "round_declined",
    )
    row = await sync_to_async(Participation.objects.unscoped().get)(pk=participation)
    assert row.status == "invited"
    await page.disconnect()


def test_an_invite_whose_update_was_uploaded_whole_is_not_sent_again(tenant, owner):
    # given two invitees of an open round: one still uploading, one whose upload is complete
    # but not yet folded (the Celery worker is down)
    from jobs.fl_artifact_models import UpdateUpload, UploadStatus
    from jobs.fl_models import Participation
    from jobs.services.fl_rounds_invites import fl_invites_pending_unscoped
    from tests.factories import WorkerFactory

    workers = [WorkerFactory(capabilities={"simd": True, "memory_mb": 4096}) for _ in range(2)]
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    job = fl_job(tenant, cohort_size=2, min_reports=2, partition_clients=4, seed=5)
    round_open(job=job)
    uploading, uploaded = Participation.objects.for_tenant(tenant).order_by("pk")
    for participation, status in ((uploading, UploadStatus.RECEIVING), (uploaded, "complete")):
        UpdateUpload.objects.create(
            tenant=tenant,
            participation=participation,
            total_bytes=32 + 4 * 650,
            chunk_size=1024,
            sha256="0" * 64,
            base_version=0,
            status=status,
        )
    # when each reconnects, then only the one still uploading is sent its invite again
    pending = {w.pk: fl_invites_pending_unscoped(worker_id=w.pk) for w in workers}
    assert pending[uploading.worker_id] == [uploading.invite]
    assert pending[uploaded.worker_id] == []


async def test_a_page_that_declines_is_replaced_by_another_page_online(tenant, owner):
    # given two browser pages online and a running FL job whose round of one invited one of them
    from jobs.fl_models import Participation, Round

    pages = [await _browser_connected(await sync_to_async(_token)()) for _ in range(2)]
    job = await sync_to_async(_core_job)(tenant, owner)
    await sync_to_async(round_open)(job=job)
    first = await sync_to_async(Participation.objects.unscoped().get)(round__job=job)
    received = {}
    for index, page in enumerate(pages):
        if not await page.receive_nothing(timeout=0.5):
            received[index] = edge.parse_server_message(await page.receive_from(timeout=5))
    assert len(received) == 1
    ((invited_index, invite),) = received.items()
    assert invite["participation"] == first.pk
    other = pages[1 - invited_index]
    # when the invited page declines it (no local data for this job)
    declined = edge.round_declined(first.pk, "no_local_data", "nothing chosen")
    await pages[invited_index].send_to(text_data=edge.encode_text(declined))
    # then the other page is invited in its place, to the same shard of the same round
    replacement = edge.parse_server_message(await other.receive_from(timeout=5))
    assert replacement["type"] == "round_invite"
    assert replacement["round"] == invite["round"]
    assert replacement["participation"] != first.pk
    assert replacement["data"]["client_index"] == invite["data"]["client_index"]
    assert await pages[invited_index].receive_nothing(timeout=0.3)
    round_ = await sync_to_async(Round.objects.unscoped().get)(job=job)
    assert round_.replacements == 1
    for page in pages:
        await page.disconnect()
