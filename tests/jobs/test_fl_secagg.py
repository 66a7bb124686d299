"""Secure FL rounds through the services, on real PostgreSQL: edge-worker wire clients
(``ccgsc_worker.secagg.wire``) answer the phase messages the services send, upload their masked
inputs through the chunked upload API, and the round closes (eager Celery) with the FedAvg of the
clipped, encoded updates; dropouts at each phase, aborts below threshold, refusals."""

from __future__ import annotations

import hashlib
import struct
from datetime import timedelta

import numpy as np
import pytest
from django.test import Client

from billing.models import UsageRecord
from billing.operations import balance_adjust
from ccgsc_worker.secagg.wire import WireClient, b64encode, masked_body
from jobs import dispatch, realtime
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.privacy import per_client_variance
from jobs.privacy.skellam import distributed_scale, skellam_epsilon, skellam_release
from jobs.secagg_models import SecAggMessage, SecAggPhase, SecAggPhaseSet, SecAggRound
from jobs.services.fl_rounds import round_open
from jobs.services.fl_secagg import SecAggRefused, secagg_message_receive
from jobs.services.fl_secagg_phases import secagg_phase_close
from jobs.services.model_registry import latest_version, model_version_read
from tenants.tiers import Tier
from tests.factories import ContributorFactory, UserFactory, WorkerFactory
from tests.jobs.fl_helpers import fl_job

pytestmark = [pytest.mark.django_db(transaction=True)]

D = 650
CHUNK = 1024


class SecureCohort:
    """A secure round opened for n edge workers, each with a wire client of its own."""

    def __init__(self, tenant, *, n: int = 5, seed: int = 1, **fields) -> None:  # noqa: ANN001, ANN003
        self.job = fl_job(
            tenant,
            cohort_size=n,
            min_reports=3,
            secure_aggregation=True,
            round_deadline_seconds=60,
            rounds=2,
            **fields,
        )
        # Accounted contributors: a secure cohort admits few anonymous ones.
        self.workers = [
            WorkerFactory(
                contributor=ContributorFactory(user=UserFactory()), capabilities={"simd": True}
            )
            for _ in range(n)
        ]
        self.tokens = {
            w.pk: dispatch.worker_token_issue(contributor=w.contributor) for w in self.workers
        }
        with realtime.sends_collected() as sent:
            round_open(job=self.job)
        self.round = Round.objects.for_tenant(tenant).get(job=self.job)
        self.secagg = SecAggRound.objects.for_tenant(tenant).get(round=self.round)
        self.invites = {
            m["participation"]: m for _, m in sent if m["type"] == "worker.round_invite"
        }
        self.participations = {p.pk: p for p in self.round.participations.all()}
        self.clients = {
            pid: WireClient(
                job=inv["job"],
                round_number=inv["round"],
                participation=pid,
                block=inv["secagg"],
                dimension=D,
            )
            for pid, inv in self.invites.items()
        }
        rng = np.random.default_rng(seed)
        # Some coordinates beyond the bound: they are clipped before encoding.
        self.updates = {pid: rng.normal(0, 0.4, D).astype(np.float32) for pid in self.clients}
        self.inbox: dict[int, list[dict]] = {pid: [] for pid in self.clients}

    def send(self, pid: int, message: dict) -> None:
        contributor = self.participations[pid].contributor_id
        with realtime.sends_collected() as sent:
            secagg_message_receive(contributor_id=contributor, message=message)
        self._deliver(sent)

    def _deliver(self, sent) -> None:  # noqa: ANN001
        channels = {w.channel_name: w for w in self.workers}
        for channel, event in sent:
            if event["type"] == "worker.secagg":
                assert channel in channels
                message = {"type": event["kind"], **event["fields"]}
                self.inbox[message["participation"]].append(message)

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
            with realtime.sends_collected() as sent:
                _upload(self.tokens[self.participations[pid].worker_id], pid, body)
            self._deliver(sent)

    def reveal(self, pids) -> None:  # noqa: ANN001
        for pid in pids:
            self.send(pid, self.clients[pid].on_unmask(self.last(pid, "secagg_unmask")))

    def expire(self, phase: str) -> None:
        self.secagg.refresh_from_db()
        later = self.secagg.phase_deadline + timedelta(seconds=1)
        with realtime.sends_collected() as sent:
            secagg_phase_close(round_id=self.round.pk, phase=phase, now=later)
        self._deliver(sent)

    def expected_mean(self, pids) -> np.ndarray:  # noqa: ANN001
        bound = self.secagg.bound
        clipped = [np.clip(self.updates[pid].astype(np.float64), -bound, bound) for pid in pids]
        return np.mean(clipped, axis=0)


def _upload(token: str, pid: int, data: bytes, *, base_version: int = 0) -> None:
    client = Client(HTTP_AUTHORIZATION=f"Worker {token}")
    created = client.post(
        "/fl/uploads/",
        {
            "participation": pid,
            "total_bytes": len(data),
            "chunk_size": CHUNK,
            "sha256": hashlib.sha256(data).hexdigest(),
            "base_version": base_version,
        },
        content_type="application/json",
    ).json()
    for index in range(created["chunk_count"]):
        chunk = data[index * CHUNK : (index + 1) * CHUNK]
        client.put(
            f"/fl/uploads/{created['upload']}/chunks/{index}",
            chunk,
            content_type="application/octet-stream",
            headers={"X-Chunk-SHA256": hashlib.sha256(chunk).hexdigest()},
        )
    assert client.post(f"/fl/uploads/{created['upload']}/complete").status_code == 202


@pytest.fixture
def core_tenant(tenant, owner):  # noqa: ANN001, ANN201
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    return tenant


def test_a_secure_round_closes_with_the_fedavg_of_the_clipped_updates(core_tenant):
    # given a secure round of five edge workers
    cohort = SecureCohort(core_tenant)
    everyone = sorted(cohort.clients)
    w0 = model_version_read(model_version=latest_version(job=cohort.job)).astype(np.float64)
    # when every client goes through the four phases
    cohort.advertise(everyone)
    cohort.share(everyone)
    cohort.upload(everyone)
    cohort.reveal(everyone)
    # then each phase's set was fixed once, and the round closed into version 1
    sets = SecAggPhaseSet.objects.for_tenant(core_tenant).filter(secagg_round=cohort.secagg)
    assert {s.phase: len(s.members) for s in sets} == {
        "advertise": 5,
        "share": 5,
        "masked_input": 5,
        "unmask": 5,
    }
    cohort.round.refresh_from_db()
    assert cohort.round.status == RoundStatus.CLOSED
    assert cohort.round.reports == 5
    version = latest_version(job=cohort.job)
    assert version.version == 1
    np.testing.assert_allclose(
        model_version_read(model_version=version),
        w0 + cohort.expected_mean(everyone),
        atol=1e-6,
    )
    assert UsageRecord.objects.for_tenant(core_tenant).filter(job=cohort.job).count() == 1
    included = Participation.objects.for_tenant(core_tenant).filter(round=cohort.round)
    assert sorted(included.filter(included=True).values_list("pk", flat=True)) == everyone
    cohort.secagg.refresh_from_db()
    assert cohort.secagg.phase == SecAggPhase.DONE


def test_dropouts_after_sharing_and_after_the_masked_input_are_recovered(core_tenant):
    # given a secure round of six (k = 5, t = 3) where all advertise and share keys
    cohort = SecureCohort(core_tenant, n=6, seed=2)
    everyone = sorted(cohort.clients)
    w0 = model_version_read(model_version=latest_version(job=cohort.job)).astype(np.float64)
    cohort.advertise(everyone)
    cohort.share(everyone)
    # when one never sends its masked input, and another goes silent after sending it
    silent_before_input, silent_after_input = everyone[0], everyone[1]
    cohort.upload(everyone[1:])
    cohort.expire(SecAggPhase.MASKED_INPUT)
    fixed = SecAggPhaseSet.objects.for_tenant(core_tenant).get(
        secagg_round=cohort.secagg, phase=SecAggPhase.MASKED_INPUT
    )
    clients = {pid: int(c) for c, pid in cohort.secagg.clients.items()}
    assert fixed.dropped == [clients[silent_before_input]]
    assert cohort.inbox[silent_before_input][-1]["type"] == "secagg_ciphertexts"
    cohort.reveal(everyone[2:])
    cohort.expire(SecAggPhase.UNMASK)
    # then the model is the mean of the five masked inputs: the dropped client's pairwise masks
    # and the silent one's self mask were rebuilt from their neighbours' shares
    version = latest_version(job=cohort.job)
    assert version.version == 1
    np.testing.assert_allclose(
        model_version_read(model_version=version),
        w0 + cohort.expected_mean(everyone[1:]),
        atol=1e-6,
    )
    assert silent_after_input in everyone[1:]


def test_a_round_below_threshold_aborts_without_a_version_or_a_charge(core_tenant):
    # given a secure round of five that needs five survivors
    cohort = SecureCohort(core_tenant, seed=3, secagg_min_survivors=5, cohort_fraction=None)
    everyone = sorted(cohort.clients)
    # when one of them never advertises and the phase's deadline passes
    cohort.advertise(everyone[1:])
    cohort.expire(SecAggPhase.ADVERTISE)
    # then the round failed with the reason, nobody was charged, every participant was told
    cohort.round.refresh_from_db()
    assert cohort.round.status == RoundStatus.FAILED
    assert cohort.round.metrics["reason"] == "secure_aggregation"
    assert cohort.round.metrics["detail"] == "4 clients advertised, the minimum is 5"
    assert latest_version(job=cohort.job).version == 0
    assert not UsageRecord.objects.for_tenant(core_tenant).filter(job=cohort.job).exists()
    assert all(cohort.inbox[pid][-1]["type"] == "secagg_abort" for pid in everyone)
    cohort.secagg.refresh_from_db()
    assert cohort.secagg.phase == SecAggPhase.ABORTED
    # and the next round opened
    assert Round.objects.for_tenant(core_tenant).filter(job=cohort.job, number=2).exists()


def test_messages_out_of_phase_or_from_strangers_are_refused_and_change_nothing(
    core_tenant, other_tenant
):
    cohort = SecureCohort(core_tenant, seed=4)
    pid = sorted(cohort.clients)[0]
    advert = cohort.clients[pid].advertise()
    stranger = WorkerFactory(capabilities={"simd": True})
    cases = [
        (stranger.contributor_id, advert, "no such participation"),
        (
            cohort.participations[pid].contributor_id,
            {"type": "secagg_share_keys", "participation": pid, "ciphertexts": []},
            "the round is in phase advertise, not share",
        ),
        (
            cohort.participations[pid].contributor_id,
            {**advert, "cipher_public": b64encode(bytes(31))},
            "cipher_public must be 32 bytes",
        ),
    ]
    for contributor, message, reason in cases:
        with pytest.raises(SecAggRefused) as refused:
            secagg_message_receive(contributor_id=contributor, message=message)
        assert refused.value.message == reason
    assert not SecAggMessage.objects.for_tenant(core_tenant).exists()
    assert not SecAggMessage.objects.for_tenant(other_tenant).exists()


DISTRIBUTED = {
    "differential_privacy": True,
    "dp_mode": "distributed",
    "dp_epsilon": 20.0,
    "dp_noise_multiplier": 1.0,
    "dp_clip_norm": 0.5,
}


def test_a_distributed_round_sizes_the_shares_and_records_the_epsilon_of_its_survivors(
    core_tenant,
):
    # given a distributed-DP secure round of five accounted clients that accepts four
    cohort = SecureCohort(core_tenant, seed=4, secagg_min_survivors=4, **DISTRIBUTED)
    everyone = sorted(cohort.clients)
    # then every invite asks for a Skellam share sized for four, at a scale with its headroom
    scale = distributed_scale(n_clients=5, clip_norm=0.5, noise_multiplier=1.0, noise_shares=4)
    variance = per_client_variance(
        noise_multiplier=1.0, clip_norm=0.5, scale=scale, min_survivors=4
    )
    assert cohort.secagg.scale == pytest.approx(scale)
    for invite in cohort.invites.values():
        assert invite["secagg"]["noise"] == {"mechanism": "skellam", "variance": variance}
    # when all five go through the four phases
    cohort.advertise(everyone)
    cohort.share(everyone)
    cohort.upload(everyone)
    cohort.reveal(everyone)
    # then the round closed and recorded the ε of five shares at that scale
    cohort.round.refresh_from_db()
    assert cohort.round.status == RoundStatus.CLOSED
    release = skellam_release(clip_norm=0.5, scale=scale, dimension=D, variance=5 * variance)
    assert cohort.round.epsilon_spent == pytest.approx(skellam_epsilon([(release, 1)], delta=1e-5))
    assert cohort.round.metrics["dp_mechanism"] == "skellam"


def test_a_distributed_round_with_fewer_survivors_than_its_shares_need_aborts(core_tenant):
    # given a distributed-DP secure round of six (k = 5, t = 3) whose shares are sized for five
    cohort = SecureCohort(core_tenant, n=6, seed=5, secagg_min_survivors=5, **DISTRIBUTED)
    everyone = sorted(cohort.clients)
    cohort.advertise(everyone)
    cohort.share(everyone)
    # when only four send their masked (and noised) inputs before the deadline: every one of
    # them keeps t live neighbours, so only the survivors' minimum can stop the round
    cohort.upload(everyone[:4])
    cohort.expire(SecAggPhase.MASKED_INPUT)
    # then the round aborts rather than release a sum with too little noise, and spends nothing
    cohort.round.refresh_from_db()
    assert cohort.round.status == RoundStatus.FAILED
    assert cohort.round.metrics["detail"] == "4 clients sent a masked input, the minimum is 5"
    assert latest_version(job=cohort.job).version == 0
    assert cohort.round.epsilon_spent == 0.0
