"""The director's FL curves: the ``fl`` section of ``job_state`` (exact values, bounded, inside
the protocol's schema and size), the spread ``round_close`` stores, and round closes reaching
viewers through one shared read."""

from __future__ import annotations

import asyncio
import json
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.http import Http404
from django.test import Client
from django.utils import timezone

from billing.operations import balance_adjust
from ccgsc_site.asgi import application
from jobs import director, protocol, realtime, selectors
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.models import JobEvent
from jobs.selectors import FL_CURVE_ROUNDS, job_state
from jobs.services.fl_rounds_version import client_accuracy_std
from tenants.tiers import Tier
from tests.jobs.fl_helpers import fl_job, fl_job_unchecked
from tests.jobs.test_fl_rounds import D, Uploader, body, open_round, shard_size, workers

SERIES = (
    "train_loss",
    "train_accuracy",
    "eval_loss",
    "eval_accuracy",
    "client_accuracy_std",
    "staleness_mean",
    "duration_seconds",
    "participants",
    "dropouts",
    "stragglers",
    "rejected",
    "bytes_up",
    "bytes_down",
)


def closed_round(job, number: int, **metrics) -> Round:  # noqa: ANN001, ANN003
    """A closed round as ``round_close`` leaves it."""
    return Round.objects.create(
        tenant=job.tenant,
        job=job,
        number=number,
        status=RoundStatus.CLOSED,
        cohort_size=4,
        reports=3,
        dropouts=1,
        stragglers=number % 2,
        bytes_up=3 * 2632,
        bytes_down=4 * 2600,
        closed_at=timezone.now(),
        metrics={
            "train_loss": 2.0 / number,
            "train_accuracy": 0.5 + number / 100,
            "participants": 3,
            "invited": 4,
            "dropouts": 1,
            "samples": 90,
            "base_version": number - 1,
            "duration_seconds": 12.5,
            "client_accuracy_std": 0.0625,
            "version": number,
            **metrics,
        },
    )


@pytest.mark.django_db
def test_the_fl_section_holds_each_closed_round_in_order_with_exact_values(tenant):
    # Given: an FL job with two closed rounds, a failed one between them, and one open
    job, _ = fl_job_unchecked(tenant)
    closed_round(job, 1)
    Round.objects.create(
        tenant=tenant, job=job, number=2, status=RoundStatus.FAILED, metrics={"reports": 1}
    )
    closed_round(
        job,
        3,
        eval_loss=0.4,
        eval_accuracy=0.71234567,
        staleness_mean=1.5,
        train_loss=2.0 / 3,
        rejected=2,
    )
    Round.objects.create(tenant=tenant, job=job, number=4, status=RoundStatus.OPEN)
    # When
    fl = job_state(tenant=tenant, job_id=job.pk)["fl"]
    # Then: column-wise, oldest first, rounded to 6 significant digits, null where not measured
    assert fl == {
        "rounds_closed": 2,
        "rounds_failed": 1,
        "round_open": 4,
        "round": [1, 3],
        "train_loss": [2.0, 0.666667],
        "train_accuracy": [0.51, 0.53],
        "eval_loss": [None, 0.4],
        "eval_accuracy": [None, 0.712346],
        "client_accuracy_std": [0.0625, 0.0625],
        "staleness_mean": [None, 1.5],
        "duration_seconds": [12.5, 12.5],
        "participants": [3, 3],
        "dropouts": [1, 1],
        "stragglers": [1, 1],
        "rejected": [None, 2],
        "bytes_up": [7896, 7896],
        "bytes_down": [10400, 10400],
    }


@pytest.mark.django_db
def test_an_fl_job_without_rounds_has_empty_series_inside_the_schema(tenant):
    job, _ = fl_job_unchecked(tenant)
    fl = job_state(tenant=tenant, job_id=job.pk)["fl"]
    assert (fl["rounds_closed"], fl["rounds_failed"], fl["round_open"]) == (0, 0, None)
    assert all(fl[name] == [] for name in ("round", *SERIES))
    protocol.director_state(state=job_state(tenant=tenant, job_id=job.pk))


@pytest.mark.django_db
def test_another_tenant_reads_no_curves(tenant, other_tenant):
    job, _ = fl_job_unchecked(tenant)
    closed_round(job, 1)
    with pytest.raises(Http404):
        job_state(tenant=other_tenant, job_id=job.pk)
    assert selectors.fl_curves(tenant=other_tenant, job=job)["round"] == []


@pytest.mark.django_db
def test_many_rounds_keep_the_last_hundred_inside_the_schema_and_the_frame_limit(tenant):
    # Given: 250 closed rounds with every series at full width (long floats, huge byte counts),
    # and the events list full of long messages
    job, _ = fl_job_unchecked(tenant)
    for number in range(1, 251):
        closed_round(
            job,
            number,
            eval_loss=1 / 3,
            eval_accuracy=1 / 3,
            rejected=1000,
            staleness_mean=2 / 3,
            client_accuracy_std=1 / 7,
            train_accuracy=1 / 9,
            duration_seconds=123.456789,
        )
    Round.objects.for_tenant(tenant).filter(job=job).update(bytes_up=10**12, bytes_down=10**12)
    for index in range(20):
        JobEvent.objects.create(
            tenant=tenant, job=job, kind="fl.note", message="x" * 200 + str(index)
        )
    # When
    state = job_state(tenant=tenant, job_id=job.pk)
    message = protocol.director_state(state=state)  # validated against the schema
    # Then: the last 100 rounds, and the whole message well under the text-frame limit
    fl = state["fl"]
    assert fl["round"] == list(range(251 - FL_CURVE_ROUNDS, 251))
    assert all(len(fl[name]) == FL_CURVE_ROUNDS for name in SERIES)
    size = len(protocol.encode(message).encode())
    assert size < protocol.MAX_JSON_BYTES, size


def test_a_state_outside_the_schema_is_refused_before_it_is_sent():
    state = {
        "job": str(uuid.uuid4()),
        "status": "running",
        "progress_percent": 0,
        "tasks": {},
        "replicas": {},
        "workers": [],
        "events": [],
        "fl": {"round": [1], "train_loss": ["not a number"]},
    }
    with pytest.raises(protocol.OutboundMessageError):
        protocol.director_state(state=state)


def test_the_client_accuracy_spread_is_the_population_deviation_of_included_clients():
    clients = [
        SimpleNamespace(correct=5, samples=10),
        SimpleNamespace(correct=9, samples=10),
        SimpleNamespace(correct=0, samples=0),  # no samples: not a client accuracy
    ]
    assert client_accuracy_std(clients) == pytest.approx(0.2)
    assert client_accuracy_std(clients[:1]) is None


@pytest.mark.django_db(transaction=True)
async def test_viewers_hearing_a_round_close_share_one_read_begun_after_it(monkeypatch):
    # Given: a process whose viewers just shared a tick's snapshot
    calls = []

    def fake_job_state(*, tenant, job_id):  # noqa: ANN001, ANN202
        calls.append(job_id)
        return {"n": len(calls)}

    monkeypatch.setattr(selectors, "job_state", fake_job_state)
    tenant, job_id = SimpleNamespace(pk=1), uuid.uuid4()
    _, before = await director.job_state_shared(tenant=tenant, job_id=job_id)
    # When: a round closes and a hundred viewers hear it
    seen = [director.round_close_seen_at(job_id=job_id, round_number=7) for _ in range(100)]
    states = await asyncio.gather(
        *(director.job_state_shared(tenant=tenant, job_id=job_id, not_before=at) for at in seen)
    )
    # Then: one more read, not the tick's snapshot, shared by all of them
    assert before == {"n": 1}
    assert len(set(seen)) == 1
    assert calls == [job_id, job_id]
    assert {state["n"] for _, state in states} == {2}


@pytest.mark.django_db(transaction=True)
async def test_a_round_close_reaches_a_viewer_with_the_new_point(tenant, owner, monkeypatch):
    # Given: the owner watches an FL job with one closed round (no tick during the test: the
    # new point can only come from the round-closed handler)
    monkeypatch.setattr(director, "DIRECTOR_INTERVAL_S", 3600.0)
    job, _ = await sync_to_async(fl_job_unchecked)(tenant)
    await sync_to_async(closed_round)(job, 1)

    def session_cookie() -> str:
        client = Client()
        client.force_login(owner)
        return client.cookies["sessionid"].value

    cookie = await sync_to_async(session_cookie)()
    communicator = WebsocketCommunicator(
        application,
        f"/ws/jobs/{job.pk}/",
        headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={cookie}".encode())],
    )
    connected, _ = await communicator.connect()
    assert connected
    first = await communicator.receive_json_from(timeout=5)
    assert first["state"]["fl"]["round"] == [1]
    # When: round 2 closes and its event reaches the job's group
    await sync_to_async(closed_round)(job, 2)
    await get_channel_layer().group_send(
        realtime.job_group(job.pk), {"type": "job.round_closed", "round": 2, "metrics": {}}
    )
    # Then: the viewer gets the new point (and its socket stays open)
    message = await communicator.receive_json_from(timeout=5)
    assert message["type"] == "state"
    assert message["state"]["fl"]["round"] == [1, 2]
    assert json.dumps(message["state"]["fl"]["train_loss"]) == "[2.0, 1.0]"
    await communicator.disconnect()


# Rounds closed by the real services: what round_close stores is what the curves show.


@pytest.fixture
def media_in_tmp(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }


@pytest.fixture
def core(tenant, owner, media_in_tmp):
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return tenant


@pytest.mark.django_db
def test_a_closed_sync_round_shows_its_accuracy_spread_and_no_staleness(
    core, django_capture_on_commit_callbacks
):
    # Given: a round of three clients at accuracies 0, 0 and 1, each declaring its shard's size
    job = fl_job(core, cohort_size=3, min_reports=3, rounds=5)
    round_, who = open_round(job, workers(3))
    sizes = [shard_size(job, participation_id) for participation_id in who]
    results = dict(zip(who, ((sizes[0], 0), (sizes[1], 0), (sizes[2], sizes[2])), strict=True))
    # When: they report and the round closes
    with django_capture_on_commit_callbacks(execute=True):
        for participation_id, worker in who.items():
            samples, correct = results[participation_id]
            participation = Participation.objects.for_tenant(core).get(pk=participation_id)
            update = np.full(D, 0.01, np.float32)
            data = body(update, samples=samples, loss_sum=1.0, correct=correct)
            assert Uploader(worker, participation).send(data)[1].status_code == 202
    # Then: the curves show the round with the population σ of the three accuracies
    fl = selectors.fl_curves(tenant=core, job=job)
    assert (fl["round"], fl["round_open"], fl["participants"]) == ([1], 2, [3])
    assert fl["train_accuracy"] == [float(f"{sizes[2] / sum(sizes):.6g}")]
    assert fl["client_accuracy_std"] == [0.471405]
    assert fl["staleness_mean"] == [None]


@pytest.mark.django_db
def test_async_rounds_show_the_mean_staleness_of_their_updates(
    core, django_capture_on_commit_callbacks
):
    # Given: buffered async with K = 1; a fast client closes round 1
    job = fl_job(
        core,
        cohort_size=2,
        min_reports=1,
        mode="async",
        buffer_size=1,
        staleness_bound=1,
        staleness_weighting="polynomial",
        rounds=10,
    )
    _, who = open_round(job, workers(2))
    fast, slow = list(who)
    with django_capture_on_commit_callbacks(execute=True):
        Uploader(who[fast], Participation.objects.for_tenant(core).get(pk=fast)).send(
            body(np.ones(D, np.float32), samples=4)
        )
    # When: the slow client, trained on version 0, closes round 2
    with django_capture_on_commit_callbacks(execute=True):
        Uploader(who[slow], Participation.objects.for_tenant(core).get(pk=slow)).send(
            body(np.ones(D, np.float32), samples=4), base_version=0
        )
    # Then: staleness 0 then 1; one client per round has no spread
    fl = selectors.fl_curves(tenant=core, job=job)
    assert fl["round"] == [1, 2]
    assert fl["staleness_mean"] == [0.0, 1.0]
    assert fl["client_accuracy_std"] == [None, None]
