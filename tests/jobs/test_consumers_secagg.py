"""The worker consumer's secure-aggregation messages, through Channels' WebsocketCommunicator:
a refused message gets ``secagg_refused`` and records nothing, another tenant's or contributor's
participation is not found, a valid one is recorded, and phase events reach the socket."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from billing.operations import balance_adjust
from ccgsc_site.asgi import application
from ccgsc_worker.secagg.wire import WireClient, b64encode
from jobs import dispatch
from jobs.fl_models import Participation, Round
from jobs.models import Worker
from jobs.secagg_models import SecAggMessage
from jobs.services.fl_rounds import round_open
from tenants.tiers import Tier
from tests.factories import ContributorFactory, UserFactory, WorkerFactory
from tests.jobs.fl_helpers import fl_job
from tests.jobs.helpers import HELLO

pytestmark = pytest.mark.django_db(transaction=True)


def _secure_round(tenant, owner, contributor_id):  # noqa: ANN001, ANN202
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    job = fl_job(tenant, cohort_size=3, min_reports=3, secure_aggregation=True)
    for _ in range(2):  # accounted: a secure cohort admits few anonymous contributors
        WorkerFactory(
            contributor=ContributorFactory(user=UserFactory()), capabilities={"simd": True}
        )
    round_open(job=job)
    round_ = Round.objects.for_tenant(tenant).get(job=job)
    mine = Participation.objects.for_tenant(tenant).get(round=round_, contributor_id=contributor_id)
    return round_, mine


async def test_secagg_messages_are_validated_refused_or_recorded(tenant, owner, other_tenant):
    # given a connected edge worker invited to a secure round, and another tenant's round
    contributor, token = await sync_to_async(dispatch.contributor_create_anonymous)()
    contributor.user = await sync_to_async(UserFactory)()  # accounted: eligible for the cohort
    await sync_to_async(contributor.save)(update_fields=["user"])
    communicator = WebsocketCommunicator(
        application, "/ws/edge/", headers=[(b"origin", b"http://127.0.0.1")]
    )
    assert (await communicator.connect())[0]
    await communicator.send_to(text_data=json.dumps({**HELLO, "token": token}))
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    round_, mine = await sync_to_async(_secure_round)(tenant, owner, contributor.pk)
    invite = await communicator.receive_json_from(timeout=5)
    assert invite["type"] == "round_invite"
    assert invite["participation"] == mine.pk
    assert invite["secagg"]["clients"] == 3
    client = WireClient(
        job=invite["job"],
        round_number=invite["round"],
        participation=mine.pk,
        block=invite["secagg"],
        dimension=invite["model"]["parameters"],
    )
    advert = client.advertise()
    stranger = await sync_to_async(
        lambda: Participation.objects.for_tenant(tenant).exclude(pk=mine.pk).first().pk
    )()
    # when it sends a malformed key, someone else's participation, a message out of phase
    cases = [
        ({**advert, "cipher_public": "short"}, "invalid_message"),
        ({**advert, "participation": stranger}, "secagg_refused"),
        ({**advert, "participation": 10**9}, "secagg_refused"),
        (
            {
                "v": 1,
                "type": "secagg_unmask_shares",
                "participation": mine.pk,
                "shares": [{"client": 1, "share": b64encode(bytes(33))}],
            },
            "secagg_refused",
        ),
    ]
    for message, code in cases:
        await communicator.send_to(text_data=json.dumps(message))
        reply = await communicator.receive_json_from(timeout=5)
        # then each is answered with its error and nothing is recorded
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", code, message["type"])
    count = sync_to_async(lambda t: SecAggMessage.objects.for_tenant(t).count())
    assert await count(tenant) == 0
    assert await count(other_tenant) == 0
    # when it sends its own advertisement, then it is recorded without an answer
    await communicator.send_to(text_data=json.dumps(advert))
    assert await communicator.receive_nothing(timeout=0.5)
    assert await count(tenant) == 1
    # and a phase event for its channel becomes the outbound message
    channel = await sync_to_async(
        lambda: Worker.objects.get(contributor_id=contributor.pk).channel_name
    )()
    await get_channel_layer().send(
        channel,
        {
            "type": "worker.secagg",
            "kind": "secagg_abort",
            "fields": {"participation": mine.pk, "round": round_.number, "reason": "below t"},
            "deadline": None,
        },
    )
    abort = await communicator.receive_json_from(timeout=5)
    assert abort == {
        "v": 1,
        "type": "secagg_abort",
        "participation": mine.pk,
        "round": round_.number,
        "reason": "below t",
    }
    await communicator.disconnect()
