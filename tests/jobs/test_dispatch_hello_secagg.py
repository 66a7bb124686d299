"""A resumed hello carries the secure-round phase requests its worker has not answered, read in
the hello's own flush, against real PostgreSQL: the same events the phase close sent, for each
worker only its own rounds', none after the round ended, in a number of statements that does
not grow with the hellos; and through a real consumer the worker gets them after ``welcome``."""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.operations import balance_adjust
from ccgsc_site.asgi import application
from jobs import dispatch
from jobs.dispatch.batch import dispatch_batch
from jobs.dispatch.batch_sessions import HelloItem
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.models import Worker
from jobs.secagg_models import SecAggPhase
from jobs.services.fl_secagg_requests import secagg_requests_pending_unscoped
from tenants.tiers import Tier
from tests.jobs.helpers import HELLO, new_worker
from tests.jobs.test_fl_secagg import core_tenant  # noqa: F401 - the fixture
from tests.jobs.test_fl_secagg_groups import Groups

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def _resume(worker_id: uuid.UUID) -> HelloItem:
    """A hello resuming ``worker_id`` with a fresh token of its contributor."""
    contributor = Worker.objects.get(pk=worker_id).contributor
    token = dispatch.worker_token_issue(contributor=contributor)
    contributor_id, version = dispatch.worker_token_read(token=token)
    return HelloItem(
        contributor_id=contributor_id,
        token_version=version,
        hello={**HELLO, "token": token, "resume": str(worker_id)},
        channel_name=f"chan-{uuid.uuid4().hex[:6]}",
    )


def _flush(worker_ids: list[uuid.UUID]) -> tuple[dict[uuid.UUID, list[dict]], list[str]]:
    """Resume these workers in one flush: worker → its session's phase requests, and the SQL."""
    items = [_resume(w) for w in worker_ids]
    with CaptureQueriesContext(connection) as queries:
        outcome = dispatch_batch(hellos=items)
    assert [s.resumed for s in outcome.hellos] == [True] * len(items)
    requests = {s.worker_id: s.secagg_requests for s in outcome.hellos}
    return requests, [q["sql"] for q in queries.captured_queries]


def _worker_of(pid: int) -> uuid.UUID:
    return Participation.objects.unscoped().get(pk=pid).worker_id


def _as_sent(events: list[dict]) -> list[dict]:
    return [{"type": e["kind"], **e["fields"]} for e in events]


def test_a_flush_of_resumed_hellos_reads_their_phase_requests_in_statements_independent_of_n(
    core_tenant,  # noqa: F811
    other_tenant,
    other_owner,
):
    # given a secure group in its share phase where one member shared keys and two did not,
    # a second group still advertising, the same in another tenant's job, and plain workers
    other_tenant.tier = Tier.CORE
    other_tenant.save(update_fields=["tier"])
    balance_adjust(
        tenant=other_tenant, amount_cents=5000, actor=other_owner, reason="tests", promotional=True
    )
    mine = Groups(core_tenant)
    # (offline, so that the other tenant's cohort is made of its own six workers)
    Worker.objects.filter(pk__in=[w.pk for w in mine.workers]).update(is_online=False)
    theirs = Groups(other_tenant)
    assert not {w.pk for w in mine.workers} & set(
        Participation.objects.unscoped()
        .filter(tenant=other_tenant)
        .values_list("worker", flat=True)
    )
    for groups in (mine, theirs):
        first = groups.group(1)
        groups.advertise(first)
        groups.share(first[:1])
    answered, *late = (_worker_of(p) for p in mine.group(1))
    their_answered, *their_late = (_worker_of(p) for p in theirs.group(1))
    advertising = [_worker_of(p) for p in mine.group(2) + theirs.group(2)]
    plain = [new_worker()[0].worker_id for _ in range(30)]
    # when one late member of each tenant resumes with two plain workers, and then every one
    # of them resumes in one flush
    _, few = _flush([late[0], their_late[0], *plain[:2]])
    requests, many = _flush([answered, *late, their_answered, *their_late, *advertising, *plain])
    # then each late member is sent the key list the close sent it, and only its own
    for groups, pids in ((mine, mine.group(1)[1:]), (theirs, theirs.group(1)[1:])):
        for pid in pids:
            sent = groups.last(pid, "secagg_keys")
            assert _as_sent(requests[_worker_of(pid)]) == [sent]
            assert sent["participation"] == pid
    # and the one that answered, the advertising groups and the plain workers get nothing
    for worker_id in [answered, their_answered, *advertising, *plain]:
        assert requests[worker_id] == []
    # and it is what the per-worker read (the fallback's) finds
    for worker_id in [*late, *their_late, answered]:
        assert requests[worker_id] == secagg_requests_pending_unscoped(worker_id=worker_id)
    # and 4 hellos and 44 cost the same statements: one query for the phase requests and a few
    # reads per waiting round, whatever the number of hellos
    assert len(many) == len(few), (few, many)
    assert sum("jobs_secaggmessage" in sql for sql in many) == 4  # answered + relayed keys
    # when the round ends (the share phase expires below the threshold)
    mine.expire(1, SecAggPhase.SHARE)
    assert Round.objects.unscoped().get(job=mine.job, number=1).status == RoundStatus.FAILED
    requests, _ = _flush([*late, *their_late])
    # then its members are sent nothing, and the other tenant's round is untouched
    assert [requests[w] for w in late] == [[], []]
    assert [len(requests[w]) for w in their_late] == [1, 1]


@pytest.mark.parametrize("group_commit", [True, False], ids=["flush", "one-by-one"])
async def test_a_resumed_worker_is_sent_its_phase_request_after_welcome(
    core_tenant,  # noqa: F811
    settings,
    group_commit,
):
    # given a secure group whose members all advertised, one of which shared keys
    settings.DISPATCH_GROUP_COMMIT = group_commit

    def given() -> tuple[Groups, list[int]]:
        groups = Groups(core_tenant)
        first = groups.group(1)
        groups.advertise(first)
        groups.share(first[:1])
        return groups, first

    groups, first = await sync_to_async(given)()

    async def reconnect(pid: int) -> list[dict]:
        worker_id = await sync_to_async(_worker_of)(pid)
        communicator = WebsocketCommunicator(
            application, "/ws/edge/", headers=[(b"origin", b"http://127.0.0.1")]
        )
        assert (await communicator.connect())[0]
        hello = {**HELLO, "token": groups.tokens[worker_id], "resume": str(worker_id)}
        await communicator.send_to(text_data=json.dumps(hello))
        received = []
        while not await communicator.receive_nothing(timeout=1):
            received.append(await communicator.receive_json_from(timeout=5))
        await communicator.disconnect()
        return received

    # when a member that has not shared keys reconnects with its resume token
    late = await reconnect(first[1])
    # then it is welcomed, sent its pending invite again, then the key list the close sent it
    assert [m["type"] for m in late] == ["welcome", "round_invite", "secagg_keys"]
    keys = {k: v for k, v in late[2].items() if k != "deadline_ms"}
    assert keys == {"v": 1, **groups.last(first[1], "secagg_keys")}
    assert 0 < late[2]["deadline_ms"] <= 60_000
    # and the member that answered is sent no phase request
    answered = await reconnect(first[0])
    assert [m["type"] for m in answered] == ["welcome", "round_invite"]
