"""Secure aggregation in buffered-async FL through the services, on real PostgreSQL: an async job
with secure aggregation runs secure groups of K (``fl_secagg_groups``) with the sync round's
phase machinery; edge-worker wire clients answer each group's phase messages and upload masked
inputs through the chunked upload API (eager Celery). Each group's step is the mean of its
clipped updates discounted by the group's staleness; groups run concurrently, abort alone, and
a worker that reconnects mid-phase is sent the phase's request again."""

from __future__ import annotations

import struct
from datetime import timedelta

import numpy as np
import pytest
from django.core.exceptions import ValidationError

from ccgsc_worker.secagg.wire import WireClient, masked_body
from jobs import dispatch, realtime
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.secagg_models import SecAggPhase, SecAggPhaseSet, SecAggRound
from jobs.services.fl_admission import fl_cohort_invited
from jobs.services.fl_privacy import fl_epsilon_after, fl_secagg_plan
from jobs.services.fl_rounds import round_open
from jobs.services.fl_rounds_sweep import round_sweep
from jobs.services.fl_secagg import secagg_message_receive
from jobs.services.fl_secagg_phases import secagg_phase_close
from jobs.services.fl_secagg_requests import secagg_requests_pending_unscoped
from jobs.services.model_registry import latest_version, model_version_read
from tests.factories import ContributorFactory, UserFactory, WorkerFactory
from tests.jobs.fl_helpers import fl_job
from tests.jobs.test_fl_secagg import _upload, core_tenant  # noqa: F401 - the fixture

pytestmark = [pytest.mark.django_db(transaction=True)]

D = 650


class Groups:
    """An async secure job over ``workers`` accounted edge workers, its groups' wire clients,
    and what the services sent each participation."""

    def __init__(self, tenant, *, workers: int = 6, **fields) -> None:  # noqa: ANN001, ANN003
        self.workers = [
            WorkerFactory(
                contributor=ContributorFactory(user=UserFactory()), capabilities={"simd": True}
            )
            for _ in range(workers)
        ]
        self.tokens = {
            w.pk: dispatch.worker_token_issue(contributor=w.contributor) for w in self.workers
        }
        spec = {
            "mode": "async",
            "cohort_size": 6,
            "buffer_size": 3,
            "staleness_bound": 3,
            "staleness_weighting": "polynomial",
            "staleness_exponent": 0.5,
            "secure_aggregation": True,
            "round_deadline_seconds": 60,
            "rounds": 3,
        }
        self.invites: dict[int, dict] = {}
        self.inbox: dict[int, list[dict]] = {}
        self.clients: dict[int, WireClient] = {}
        self.updates: dict[int, np.ndarray] = {}
        with realtime.sends_collected() as sent:
            self.job = fl_job(tenant, **{**spec, **fields})
            round_open(job=self.job)
        self._deliver(sent)

    def _deliver(self, sent) -> None:  # noqa: ANN001
        for _, event in sent:
            if event["type"] == "worker.round_invite" and event.get("secagg"):
                pid = event["participation"]
                self.invites[pid] = event
                self.inbox[pid] = []
                self.clients[pid] = WireClient(
                    job=event["job"],
                    round_number=event["round"],
                    participation=pid,
                    block=event["secagg"],
                    dimension=D,
                )
                rng = np.random.default_rng(pid)
                self.updates[pid] = rng.normal(0, 0.4, D).astype(np.float32)
            elif event["type"] == "worker.secagg":
                message = {"type": event["kind"], **event["fields"]}
                self.inbox[message["participation"]].append(message)

    def group(self, number: int) -> list[int]:
        """The participations of group ``number``, in order."""
        round_ = Round.objects.unscoped().get(job=self.job, number=number)
        return sorted(round_.participations.values_list("pk", flat=True))

    def send(self, pid: int, message: dict) -> None:
        contributor = Participation.objects.unscoped().get(pk=pid).contributor_id
        with realtime.sends_collected() as sent:
            secagg_message_receive(contributor_id=contributor, message=message)
        self._deliver(sent)

    def last(self, pid: int, kind: str) -> dict:
        return [m for m in self.inbox[pid] if m["type"] == kind][-1]

    def advertise(self, pids) -> None:  # noqa: ANN001
        for pid in pids:
            self.send(pid, self.clients[pid].advertise())

    def share(self, pids) -> None:  # noqa: ANN001
        for pid in pids:
            self.send(pid, self.clients[pid].on_keys(self.last(pid, "secagg_keys")))

    def upload(self, pids) -> None:  # noqa: ANN001
        for pid in pids:
            client = self.clients[pid]
            client.on_ciphertexts(self.last(pid, "secagg_ciphertexts"))
            header = struct.pack("<IIdIId", 0, 10, 1.0, 5, D, 0.0)
            body = masked_body(header, client.mask_update(self.updates[pid]))
            participation = Participation.objects.unscoped().get(pk=pid)
            with realtime.sends_collected() as sent:
                _upload(
                    self.tokens[participation.worker_id],
                    pid,
                    body,
                    base_version=participation.base_version,
                )
            self._deliver(sent)

    def reveal(self, pids) -> None:  # noqa: ANN001
        for pid in pids:
            self.send(pid, self.clients[pid].on_unmask(self.last(pid, "secagg_unmask")))

    def run(self, pids) -> None:  # noqa: ANN001
        self.advertise(pids)
        self.share(pids)
        self.upload(pids)
        self.reveal(pids)

    def expire(self, number: int, phase: str) -> None:
        round_ = Round.objects.unscoped().get(job=self.job, number=number)
        secagg = SecAggRound.objects.unscoped().get(round=round_)
        later = secagg.phase_deadline + timedelta(seconds=1)
        with realtime.sends_collected() as sent:
            secagg_phase_close(round_id=round_.pk, phase=phase, now=later)
        self._deliver(sent)

    def clipped_mean(self, pids) -> np.ndarray:  # noqa: ANN001
        bound = SecAggRound.objects.unscoped().get(round__participations__pk=pids[0]).bound
        return np.mean(
            [np.clip(self.updates[p].astype(np.float64), -bound, bound) for p in pids], axis=0
        )


def _weights(job, version: int) -> np.ndarray:  # noqa: ANN001
    row = ModelVersion.objects.unscoped().get(job=job, version=version)
    return model_version_read(model_version=row).astype(np.float64)


def test_two_groups_in_flight_each_apply_their_sum_as_one_staleness_weighted_step(core_tenant):  # noqa: F811
    # given an async secure job (K = 3, three buffers) and six workers: two groups open at once,
    # of distinct workers, both from version 0
    groups = Groups(core_tenant)
    first, second = groups.group(1), groups.group(2)
    assert len(first) == len(second) == 3
    workers = dict(Participation.objects.unscoped().values_list("pk", "worker_id"))
    assert not {workers[p] for p in first} & {workers[p] for p in second}
    assert (
        not Round.objects.unscoped().filter(job=groups.job, number=3).exists()
    )  # no worker is free
    assert {Participation.objects.unscoped().get(pk=p).base_version for p in first + second} == {0}
    plan = fl_secagg_plan(job=groups.job)  # the job page's plan is a group's: k = 2 of 3
    assert (plan.cohort_invited, plan.neighbours, plan.threshold) == (3, 2, 2)
    w0 = _weights(groups.job, 0)
    # when the second group finishes its four phases first
    groups.run(second)
    # then its unmasked sum is one buffer step on version 0 (staleness 0, weight 1), and a
    # third group opens with the workers it freed, from version 1
    step_one = groups.clipped_mean(second)
    np.testing.assert_allclose(_weights(groups.job, 1), w0 + step_one, atol=1e-6)
    third = groups.group(3)
    third_workers = Participation.objects.unscoped().filter(pk__in=third)
    assert set(third_workers.values_list("worker_id", flat=True)) == {workers[p] for p in second}
    assert {Participation.objects.unscoped().get(pk=p).base_version for p in third} == {1}
    # when the first group finishes next, one version late
    groups.run(first)
    # then its step is its clipped mean discounted by (1 + 1)^-0.5
    np.testing.assert_allclose(
        _weights(groups.job, 2),
        w0 + step_one + 2**-0.5 * groups.clipped_mean(first),
        atol=1e-6,
    )
    closed = Round.objects.unscoped().get(job=groups.job, number=1)
    assert closed.status == RoundStatus.CLOSED
    assert (closed.metrics["group_staleness"], closed.metrics["participants"]) == (1, 3)
    assert closed.metrics["group_step_weight"] == pytest.approx(2**-0.5)
    # and no fourth group opens: the two closed and the one in flight make the job's three
    assert not Round.objects.unscoped().filter(job=groups.job, number=4).exists()
    round_sweep()
    assert not Round.objects.unscoped().filter(job=groups.job, number=4).exists()


def test_a_group_below_its_threshold_aborts_alone_and_the_job_goes_on(core_tenant):  # noqa: F811
    # given two groups of three in flight
    groups = Groups(core_tenant)
    first, second = groups.group(1), groups.group(2)
    # when one member of the first never advertises and the phase's deadline passes
    groups.advertise(first[1:])
    groups.expire(1, SecAggPhase.ADVERTISE)
    # then that group failed with the reason, released nothing, and told its members
    failed = Round.objects.unscoped().get(job=groups.job, number=1)
    assert failed.status == RoundStatus.FAILED
    assert failed.metrics["detail"] == "client 2 has 1 advertising neighbours, t is 2"
    assert all(groups.inbox[p][-1]["type"] == "secagg_abort" for p in first)
    assert latest_version(job=groups.job).version == 0
    # and a new group of its workers opened while the second went on to its step
    replacement = groups.group(3)
    assert len(replacement) == 3
    groups.run(second)
    np.testing.assert_allclose(
        _weights(groups.job, 1), _weights(groups.job, 0) + groups.clipped_mean(second), atol=1e-6
    )
    groups.job.refresh_from_db()
    assert groups.job.status == "running"


def test_a_group_past_the_staleness_bound_aborts_before_unmasking(core_tenant):  # noqa: F811
    # given two groups in flight and a staleness bound of 0
    groups = Groups(core_tenant, staleness_bound=0)
    first, second = groups.group(1), groups.group(2)
    groups.advertise(first)
    groups.share(first)
    # when the second group makes a version while the first is collecting masked inputs
    groups.run(second)
    groups.upload(first)
    # then the first group aborts when its inputs are in, before any unmask request
    stale = Round.objects.unscoped().get(job=groups.job, number=1)
    assert stale.status == RoundStatus.FAILED
    assert stale.metrics["detail"] == "the group is 1 versions stale, the bound is 0"
    assert not any(m["type"] == "secagg_unmask" for p in first for m in groups.inbox[p])
    assert (
        not SecAggPhaseSet.objects.unscoped()
        .filter(secagg_round__round=stale, phase=SecAggPhase.MASKED_INPUT)
        .exists()
    )
    assert latest_version(job=groups.job).version == 1


def test_a_worker_reconnecting_mid_phase_is_sent_the_current_request_again(core_tenant):  # noqa: F811
    # given a group whose members all advertised (the keys went out) and one of them that
    # shared keys
    groups = Groups(core_tenant)
    first = groups.group(1)
    groups.advertise(first)
    groups.share(first[:1])
    late = Participation.objects.unscoped().get(pk=first[1])
    # when the member that has not answered reconnects, then the key list is sent again as
    # the close sent it; the member that answered is sent nothing
    (event,) = secagg_requests_pending_unscoped(worker_id=late.worker_id)
    sent = groups.last(late.pk, "secagg_keys")
    assert (event["kind"], {"type": event["kind"], **event["fields"]}) == ("secagg_keys", sent)
    answered = Participation.objects.unscoped().get(pk=first[0])
    assert secagg_requests_pending_unscoped(worker_id=answered.worker_id) == []
    # and in the masked-input phase, its ciphertexts until its masked input is in
    groups.share(first[1:])
    (event,) = secagg_requests_pending_unscoped(worker_id=late.worker_id)
    assert {"type": event["kind"], **event["fields"]} == groups.last(late.pk, "secagg_ciphertexts")
    groups.upload(first[:2])
    assert secagg_requests_pending_unscoped(worker_id=late.worker_id) == []
    # and in the unmask phase, the unmask request until it answered
    groups.upload(first[2:])
    (event,) = secagg_requests_pending_unscoped(worker_id=late.worker_id)
    assert {"type": event["kind"], **event["fields"]} == groups.last(late.pk, "secagg_unmask")
    groups.reveal([late.pk])
    assert secagg_requests_pending_unscoped(worker_id=late.worker_id) == []


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (
            {"buffer_size": 2},
            "buffer_size",
            "Secure aggregation in async mode runs over groups of K × over-selection = 2 "
            "clients; it needs at least 3.",
        ),
        (
            {"secagg_min_survivors": 5},
            "secagg_min_survivors",
            "A secure group has 3 clients (K × over-selection): the minimum survivors is 3 to 3.",
        ),
    ],
)
def test_async_secure_jobs_with_groups_too_small_are_refused(core_tenant, fields, field, message):  # noqa: F811
    spec = {
        "mode": "async",
        "cohort_size": 6,
        "buffer_size": 3,
        "staleness_bound": 3,
        "staleness_weighting": "constant",
        "secure_aggregation": True,
    }
    with pytest.raises(ValidationError) as refused:
        fl_job(core_tenant, **{**spec, **fields})
    assert refused.value.message_dict[field] == [message]


def test_each_group_is_one_dp_release_and_an_aborted_group_spends_nothing(core_tenant):  # noqa: F811
    # given an async secure job with central DP: two groups in flight
    dp = {
        "differential_privacy": True,
        "dp_epsilon": 50.0,
        "dp_delta": 1e-5,
        "dp_noise_multiplier": 2.0,
        "dp_clip_norm": 1.0,
    }
    groups = Groups(core_tenant, **dp)
    first, second = groups.group(1), groups.group(2)
    config = groups.job.fl_config
    invited = fl_cohort_invited(config=config)
    # when the first aborts at its advertise phase and the second goes through
    groups.advertise(first[1:])
    groups.expire(1, SecAggPhase.ADVERTISE)
    groups.run(second)
    # then the aborted group spent nothing and the closed one exactly one release
    aborted = Round.objects.unscoped().get(job=groups.job, number=1)
    closed = Round.objects.unscoped().get(job=groups.job, number=2)
    assert (aborted.status, closed.status) == (RoundStatus.FAILED, RoundStatus.CLOSED)
    assert aborted.epsilon_spent == 0.0
    assert closed.epsilon_spent == pytest.approx(
        fl_epsilon_after(config=config, invited=invited, rounds=1)
    )
    assert closed.metrics["dp_clip_norm"] == 1.0
    # and the step is the noised release times the group's weight (staleness 0: weight 1)
    assert closed.metrics["group_step_weight"] == 1.0
