"""Replacements: an invitee that declines, or drops out before uploading while its round is open,
gives its place to one eligible worker not yet in the round; bounded per round, within the
protected-cohort rule, and never after a secure round's keys are fixed."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from billing.operations import balance_adjust
from jobs.fl_models import Participation, ParticipationStatus, Round, RoundStatus
from jobs.models import Worker
from jobs.services.fl_rounds_declines import participation_decline
from jobs.services.fl_rounds_invites import fl_invites_pending_unscoped
from jobs.services.fl_rounds_replace import DROPOUT_GRACE_SECONDS
from jobs.services.fl_rounds_sweep import round_sweep
from tenants.tiers import Tier
from tests.jobs.fl_helpers import fl_job
from tests.jobs.test_fl_rounds import D, Uploader, body, open_round, shard_size, workers

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }


@pytest.fixture
def core(tenant, owner):
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return tenant


def _decline(participation: Participation) -> bool:
    return participation_decline(
        worker_id=participation.worker_id,
        participation_id=participation.pk,
        reason="no_local_data",
        message="no data on this device",
    )


def _newest(round_: Round) -> Participation:
    return round_.participations.select_related("worker").order_by("-pk")[0]


def test_a_decline_is_replaced_and_the_round_closes_with_the_replacements_update(
    core, api_client, django_capture_on_commit_callbacks
):
    # given a round that invited two of three eligible workers
    job = fl_job(core, cohort_size=2, min_reports=2, rounds=2, seed=5)
    pool = workers(3)
    round_, who = open_round(job, pool)
    declining, staying = sorted(who)
    spare = next(w for w in pool if w.pk not in {who[declining].pk, who[staying].pk})
    leaving = Participation.objects.for_tenant(core).get(pk=declining)
    # when one declines (a page without local data)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert _decline(leaving) is True
    # then the third worker is invited in its place, to the same shard and version
    round_.refresh_from_db()
    replacement = _newest(round_)
    assert replacement.worker_id == spare.pk
    assert replacement.status == ParticipationStatus.INVITED
    assert round_.replacements == 1
    assert replacement.invite["data"]["client_index"] == leaving.invite["data"]["client_index"]
    assert replacement.invite["model"] == leaving.invite["model"]
    assert replacement.invite["participation"] == replacement.pk
    assert len(callbacks) == 1  # its invite, sent after the commit
    assert fl_invites_pending_unscoped(worker_id=spare.pk) == [replacement.invite]
    # when the staying invitee and the replacement upload their updates
    rng = np.random.default_rng(3)
    with django_capture_on_commit_callbacks(execute=True):
        for pid, worker in ((staying, who[staying]), (replacement.pk, spare)):
            participation = Participation.objects.for_tenant(core).get(pk=pid)
            update = rng.normal(0, 0.01, D).astype(np.float32)
            data = body(update, samples=shard_size(job, pid))
            _, completed = Uploader(worker, participation).send(data)
            assert completed.status_code == 202
    # then the round closed with both, the replacement's among them, and says so
    round_.refresh_from_db()
    assert (round_.status, round_.reports, round_.dropouts) == (RoundStatus.CLOSED, 2, 0)
    included = set(round_.participations.filter(included=True).values_list("pk", flat=True))
    assert included == {staying, replacement.pk}
    assert (round_.metrics["replacements"], round_.metrics["participants"]) == (1, 2)
    assert round_.bytes_down == 3 * 4 * D  # the replacement fetched the model too
    rounds = api_client.get(f"/api/v1/jobs/{job.pk}/rounds/").json()["results"]
    first = next(r for r in rounds if r["number"] == 1)
    assert (first["replacements"], first["reports"]) == (1, 2)


def test_replacements_are_bounded_per_round_however_often_invitees_decline(core):
    # given a round of one with five more eligible workers, every one of which declines
    job = fl_job(core, cohort_size=1, min_reports=1)
    round_, _ = open_round(job, workers(6))
    # when each invitee declines as soon as it is invited
    declined = 0
    while True:
        invited = round_.participations.filter(status=ParticipationStatus.INVITED)
        if not invited.exists():
            break
        assert _decline(invited.get()) is True
        declined += 1
    # then the round invited one replacement (its cohort size) and no more
    round_.refresh_from_db()
    assert (declined, round_.replacements, round_.participations.count()) == (2, 1, 2)
    assert round_.status == RoundStatus.OPEN


def test_a_round_without_anyone_eligible_left_invites_nobody(core):
    # given a round that invited both eligible workers
    job = fl_job(core, cohort_size=2, min_reports=2)
    round_, who = open_round(job, workers(2))
    # when one declines
    assert _decline(Participation.objects.for_tenant(core).get(pk=min(who))) is True
    # then nobody else is invited
    round_.refresh_from_db()
    assert (round_.replacements, round_.participations.count()) == (0, 2)


def test_an_invitee_offline_past_the_grace_is_replaced_by_the_sweeper(core):
    # given a round of two out of four workers
    job = fl_job(core, cohort_size=2, min_reports=2)
    round_, who = open_round(job, workers(4))
    gone, back = sorted(who)
    now = timezone.now()
    # when one invitee's worker left before uploading, past the grace, and the other only just
    Worker.objects.filter(pk=who[gone].pk).update(
        is_online=False, disconnected_at=now - timedelta(seconds=DROPOUT_GRACE_SECONDS + 1)
    )
    Worker.objects.filter(pk=who[back].pk).update(
        is_online=False, disconnected_at=now - timedelta(seconds=DROPOUT_GRACE_SECONDS - 5)
    )
    assert round_sweep(now=now) == 1
    # then the first is dropped and replaced; the second may still reconnect and report
    round_.refresh_from_db()
    statuses = dict(round_.participations.values_list("pk", "status"))
    assert statuses.pop(gone) == ParticipationStatus.DROPPED
    assert statuses.pop(back) == ParticipationStatus.INVITED
    assert list(statuses.values()) == [ParticipationStatus.INVITED]  # the replacement
    assert round_.replacements == 1
    # and a second sweep changes nothing
    assert round_sweep(now=now) == 0
    # and when the round ends at its deadline without reports, both leavers are dropouts
    round_sweep(now=round_.deadline + timedelta(seconds=1))
    round_.refresh_from_db()
    assert (round_.status, round_.dropouts, round_.metrics["replacements"]) == (
        RoundStatus.FAILED,
        3,
        1,
    )


def test_an_offline_invitee_nobody_can_replace_stays_invited(core):
    # given a round that invited both eligible workers, one of which went offline long ago
    job = fl_job(core, cohort_size=2, min_reports=2)
    round_, who = open_round(job, workers(2))
    gone = min(who)
    Worker.objects.filter(pk=who[gone].pk).update(
        is_online=False, disconnected_at=timezone.now() - timedelta(hours=1)
    )
    # when the sweeper runs
    assert round_sweep() == 0
    # then it is left invited: it may still come back before the deadline
    assert Participation.objects.for_tenant(core).get(pk=gone).status == "invited"
    round_.refresh_from_db()
    assert round_.replacements == 0
