"""Declined participations (``round_declined``): recorded with the reason, never dropouts, and
only the invitee's own invited participation of an open round can be declined."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing.operations import balance_adjust
from jobs.fl_models import Participation, ParticipationStatus, Round, RoundStatus
from jobs.services.fl_rounds import round_close, round_open
from jobs.services.fl_rounds_declines import participation_decline
from jobs.services.fl_rounds_invites import fl_invites_pending_unscoped
from tenants.tiers import Tier
from tests.factories import WorkerFactory
from tests.jobs.fl_helpers import fl_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def core(tenant, owner):
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return tenant


def _round_of_two(tenant):  # noqa: ANN001, ANN202
    job = fl_job(tenant, cohort_size=2, min_reports=2)
    for _ in range(2):
        WorkerFactory(capabilities={"simd": True, "memory_mb": 4096})
    invitations = round_open(job=job)
    assert len(invitations) == 2
    parts = Participation.objects.for_tenant(tenant).filter(round__job=job).order_by("pk")
    return job, list(parts)


def test_a_decline_is_recorded_and_the_round_does_not_count_it_a_dropout(core):
    # given a round that invited two workers
    job, (declining, silent) = _round_of_two(core)
    # when one declines its participation
    declined = participation_decline(
        worker_id=declining.worker_id,
        participation_id=declining.pk,
        reason="no_simd",
        message="no SIMD here",
    )
    # then it is declined with its reason, and its invite is no longer re-sent
    assert declined is True
    declining.refresh_from_db()
    assert (declining.status, declining.rejection_code, declining.rejection_message) == (
        ParticipationStatus.DECLINED,
        "no_simd",
        "no SIMD here",
    )
    assert fl_invites_pending_unscoped(worker_id=declining.worker_id) == []
    assert len(fl_invites_pending_unscoped(worker_id=silent.worker_id)) == 1
    # and when the round ends at its deadline without reports, only the silent one dropped out
    round_ = Round.objects.for_tenant(core).get(job=job, number=1)
    round_close(round_id=round_.pk, now=round_.deadline + timedelta(seconds=1))
    round_.refresh_from_db()
    assert (round_.status, round_.dropouts) == (RoundStatus.FAILED, 1)
    declining.refresh_from_db()
    silent.refresh_from_db()
    assert (declining.status, silent.status) == (ParticipationStatus.DECLINED, "dropped")


def test_only_the_invitee_can_decline_and_only_while_invited_in_an_open_round(core, other_tenant):
    # given a round of two invitees, and another tenant's round with its own invitee
    job, (first, second) = _round_of_two(core)
    other_tenant.tier = Tier.CORE
    other_tenant.save(update_fields=["tier"])
    balance_adjust(
        tenant=other_tenant, amount_cents=5000, actor=None, reason="tests", promotional=True
    )
    other_job = fl_job(other_tenant, cohort_size=1, min_reports=1)
    round_open(job=other_job)
    foreign = Participation.objects.for_tenant(other_tenant).get(round__job=other_job)
    # when a worker declines another worker's participation (of its round, of another tenant's
    # round) or one that does not exist
    stranger = next(p.worker_id for p in (first, second) if p.worker_id != foreign.worker_id)
    refused = [
        participation_decline(
            worker_id=first.worker_id, participation_id=second.pk, reason="paused"
        ),
        participation_decline(worker_id=stranger, participation_id=foreign.pk, reason="paused"),
        participation_decline(worker_id=first.worker_id, participation_id=10**12, reason="paused"),
    ]
    # then nothing changes
    assert refused == [False, False, False]
    statuses = {
        p.pk: p.status
        for p in Participation.objects.unscoped().filter(pk__in=[second.pk, foreign.pk])
    }
    assert statuses == {second.pk: "invited", foreign.pk: "invited"}
    # and once declined, a second decline (another reason) changes nothing either
    assert participation_decline(
        worker_id=first.worker_id, participation_id=first.pk, reason="paused"
    )
    assert not participation_decline(
        worker_id=first.worker_id, participation_id=first.pk, reason="low_memory"
    )
    first.refresh_from_db()
    assert first.rejection_code == "paused"
    # and a closed round takes no declines
    round_ = Round.objects.for_tenant(core).get(job=job, number=1)
    round_close(round_id=round_.pk, now=round_.deadline + timedelta(seconds=1))
    assert not participation_decline(
        worker_id=second.worker_id, participation_id=second.pk, reason="paused"
    )
    second.refresh_from_db()
    assert second.status == "dropped"
