"""Replacements in secure rounds: a decline while advertise keys is open hands the leaver's client
slot to an eligible worker, whose masked input then counts like anyone's; once the keys are fixed
nobody is invited; and the protected-cohort rule caps anonymous replacements."""

from __future__ import annotations

import numpy as np
import pytest

from ccgsc_worker.secagg.wire import WireClient as _WireClient
from jobs import dispatch, realtime
from jobs.fl_models import Participation, RoundStatus
from jobs.secagg_models import SecAggPhase
from jobs.services.fl_rounds_declines import participation_decline
from jobs.services.fl_secagg import SecAggRefused
from jobs.services.model_registry import latest_version, model_version_read
from tests.factories import ContributorFactory, UserFactory, WorkerFactory
from tests.jobs.test_fl_secagg import D, SecureCohort, core_tenant  # noqa: F401 - a fixture

pytestmark = [pytest.mark.django_db(transaction=True)]


def _spare(cohort: SecureCohort, *, accounted: bool = True):  # noqa: ANN202
    """One more eligible worker, known to the cohort's message delivery."""
    user = UserFactory() if accounted else None
    worker = WorkerFactory(contributor=ContributorFactory(user=user), capabilities={"simd": True})
    cohort.workers.append(worker)
    cohort.tokens[worker.pk] = dispatch.worker_token_issue(contributor=worker.contributor)
    return worker


def _decline(cohort: SecureCohort, pid: int) -> list[dict]:
    """The invitee declines; the invites sent because of it."""
    participation = cohort.participations[pid]
    with realtime.sends_collected() as sent:
        assert participation_decline(
            worker_id=participation.worker_id, participation_id=pid, reason="paused"
        )
    return [m for _, m in sent if m["type"] == "worker.round_invite"]


def _join(cohort: SecureCohort, invite: dict) -> int:
    """Give the replacement a wire client and an update, as the cohort's own clients have."""
    pid = invite["participation"]
    cohort.participations[pid] = Participation.objects.unscoped().get(pk=pid)
    cohort.invites[pid] = invite
    cohort.clients[pid] = _WireClient(
        job=invite["job"],
        round_number=invite["round"],
        participation=pid,
        block=invite["secagg"],
        dimension=D,
    )
    cohort.updates[pid] = np.random.default_rng(pid).normal(0, 0.4, D).astype(np.float32)
    cohort.inbox[pid] = []
    return pid


def test_a_decline_before_the_keys_are_fixed_hands_its_slot_to_a_replacement(core_tenant):  # noqa: F811
    # given a secure round of five in its advertise phase, and one more accounted worker online
    cohort = SecureCohort(core_tenant, seed=6)
    everyone = sorted(cohort.clients)
    spare = _spare(cohort)
    leaver = everyone[0]
    slot = next(int(c) for c, pid in cohort.secagg.clients.items() if pid == leaver)
    w0 = model_version_read(model_version=latest_version(job=cohort.job)).astype(np.float64)
    # when one invitee declines before advertising
    invites = _decline(cohort, leaver)
    # then the spare is invited into the leaver's client slot, with the round's parameters
    assert len(invites) == 1
    invite = invites[0]
    joined = _join(cohort, invite)
    assert cohort.participations[joined].worker_id == spare.pk
    assert invite["secagg"] == {**cohort.invites[leaver]["secagg"], "client": slot}
    cohort.secagg.refresh_from_db()
    assert cohort.secagg.clients[str(slot)] == joined
    # and the leaver's keys are refused: the slot is no longer its
    with pytest.raises(SecAggRefused):
        cohort.send(leaver, cohort.clients[leaver].advertise())
    # and when the replacement and the four others go through the four phases
    members = [*everyone[1:], joined]
    cohort.advertise(members)
    cohort.share(members)
    cohort.upload(members)
    cohort.reveal(members)
    # then the round closed with the five, the replacement's masked input among them
    cohort.round.refresh_from_db()
    assert (cohort.round.status, cohort.round.reports) == (RoundStatus.CLOSED, 5)
    assert cohort.round.replacements == 1
    included = cohort.round.participations.filter(included=True)
    assert sorted(included.values_list("pk", flat=True)) == sorted(members)
    np.testing.assert_allclose(
        model_version_read(model_version=latest_version(job=cohort.job)),
        w0 + cohort.expected_mean(members),
        atol=1e-6,
    )


def test_no_replacement_once_the_advertise_phase_closed(core_tenant):  # noqa: F811
    # given a secure round whose advertise phase closed with four of five, a spare worker online
    cohort = SecureCohort(core_tenant, seed=7)
    everyone = sorted(cohort.clients)
    _spare(cohort)
    cohort.advertise(everyone[1:])
    cohort.expire(SecAggPhase.ADVERTISE)
    cohort.secagg.refresh_from_db()
    assert cohort.secagg.phase == SecAggPhase.SHARE
    # when the silent one, then one that advertised, decline
    invites = _decline(cohort, everyone[0]) + _decline(cohort, everyone[1])
    # then nobody is invited: the keys, and so the cohort, are fixed
    assert invites == []
    cohort.round.refresh_from_db()
    assert (cohort.round.replacements, cohort.round.participations.count()) == (0, 5)


def test_a_decline_after_advertising_is_not_replaced_either(core_tenant):  # noqa: F811
    # given a secure round in its advertise phase where one invitee already advertised
    cohort = SecureCohort(core_tenant, seed=8)
    first = sorted(cohort.clients)[0]
    _spare(cohort)
    cohort.advertise([first])
    # when it declines: its keys are stored under its slot
    # then its slot cannot go to anyone else
    assert _decline(cohort, first) == []
    cohort.round.refresh_from_db()
    assert cohort.round.replacements == 0


def test_anonymous_replacements_stay_within_the_protected_cohort_cap(core_tenant):  # noqa: F811
    # given a secure round of five accounted workers (at most ⌊0.25 · 5⌋ = 1 anonymous), and
    # two anonymous workers online
    cohort = SecureCohort(core_tenant, seed=9)
    everyone = sorted(cohort.clients)
    anonymous = {_spare(cohort, accounted=False).pk, _spare(cohort, accounted=False).pk}
    # when two invitees decline before advertising
    first = _decline(cohort, everyone[0])
    second = _decline(cohort, everyone[1])
    # then one anonymous worker replaces the first, and nobody the second
    assert len(first) == 1
    assert second == []
    replacement = Participation.objects.unscoped().get(pk=first[0]["participation"])
    assert replacement.worker_id in anonymous
    cohort.round.refresh_from_db()
    assert (cohort.round.replacements, cohort.round.anonymous_invited) == (1, 1)
