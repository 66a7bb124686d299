"""Secure aggregation in buffered-async jobs, and phase requests re-sent after a reconnect, end
to end with real processes: Daphne, Celery (with beat), PostgreSQL, Redis, ``ccgsc-worker`` edge
workers and a scripted client over a real socket with the edge worker's own wire client.

The async test places its abort: the first group is formed of the only three workers online, one
of them the scripted client that dies after advertising, so that group fails at the share phase;
more edge workers then come online and the job's later groups run, two at once, until the job's
three buffers are in. Training is deterministic, so the test recomputes each worker's update from
its stored invite, checks every version against its group's clipped mean times the group's
staleness weight, and searches PostgreSQL, storage, Redis and the logs for the updates in the
clear. The reconnect test, in a sync round and in an async job's secure group, cuts one edge
worker's network after it advertised and before the advertise phase closed, so the key list goes
to a socket that is gone; it reconnects as the same worker and is sent the list again.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from billing.models import UsageRecord
from jobs import dispatch
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.models import Worker
from jobs.secagg_models import SecAggMessage, SecAggPhase, SecAggPhaseSet, SecAggRound
from jobs.services.model_registry import model_version_read
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import contributors_accounted, wait_until, workers_online
from tests.e2e.test_fl_secure_rounds import (
    DISTINCT,
    ScriptedClient,
    _core_tenant,
    _haystacks,
    _needles,
    _Registry,
    _retrained_update,
    _secure_job,
)
from tests.servers import TcpProxy

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _quiesce(stack, *clients: threading.Thread) -> None:  # noqa: ANN001
    """Stop every worker and wait until the server has marked them all offline, so no
    disconnect is being written while the test database is flushed."""
    for worker in stack.edge_workers:
        worker.stop(kill=True)
    for client in clients:
        client.join(timeout=30)
    wait_until(
        lambda: not Worker.objects.filter(is_online=True).exists(),
        timeout_s=30,
        what="every worker offline",
        logs=stack.logs,
    )


def _sets(tenant, round_: Round) -> dict[str, SecAggPhaseSet]:  # noqa: ANN001
    secagg = SecAggRound.objects.for_tenant(tenant).get(round=round_)
    rows = SecAggPhaseSet.objects.for_tenant(tenant).filter(secagg_round=secagg)
    return {row.phase: row for row in rows}


def test_an_async_secure_job_runs_groups_of_k_and_a_group_below_threshold_aborts_alone(
    fc_stack, tenant, owner
):
    # given two edge workers and a scripted client that dies after advertising: the only three
    # workers online
    _core_tenant(tenant, owner)
    fc_stack.edge_worker()
    fc_stack.edge_worker()
    _, doomed_token = dispatch.contributor_create_anonymous()
    doomed = ScriptedClient(fc_stack.daphne.url, doomed_token, DISTINCT, "advertise")
    doomed.start()
    workers_online(3, fc_stack)
    contributors_accounted()
    # when an async secure job (K = 3, three buffers) starts, its first group is those three
    job = _secure_job(
        tenant,
        mode="async",
        cohort_size=6,
        min_reports=3,
        buffer_size=3,
        rounds=3,
        staleness_bound=5,
        staleness_weighting="polynomial",
        partition_clients=6,
    )
    first = wait_until(
        lambda: Round.objects.for_tenant(tenant).filter(job=job, number=1).first(),
        timeout_s=30,
        what="the first group",
        logs=fc_stack.logs,
    )
    assert first.cohort_size == 3
    # and four more edge workers come online for the next groups
    for _ in range(4):
        fc_stack.edge_worker()
    workers_online(6, fc_stack)
    contributors_accounted()
    job = wait_for_job(job.pk, timeout_s=180, stack=fc_stack)
    # then the first group failed at its share phase, alone: no version, no charge from it
    first.refresh_from_db()
    assert first.status == RoundStatus.FAILED, fc_stack.logs()
    assert first.metrics["reason"] == "secure_aggregation"
    assert doomed.reached == ["advertise"]
    assert set(_sets(tenant, first)) == {"advertise"}  # it failed when keys were to be shared
    # and three groups of three closed, each one buffer step, charged once each
    groups = list(
        Round.objects.for_tenant(tenant).filter(job=job, status=RoundStatus.CLOSED).order_by("pk")
    )
    assert len(groups) == 3
    assert UsageRecord.objects.for_tenant(tenant).filter(job=job).count() == 3
    versions = {v.version: v for v in ModelVersion.objects.for_tenant(tenant).filter(job=job)}
    assert sorted(versions) == [0, 1, 2, 3]
    edge_contributors = {w.contributor_id for w in fc_stack.edge_workers}
    needles = []
    for group in groups:
        members = list(Participation.objects.for_tenant(tenant).filter(round=group))
        assert len(members) == 3
        assert {m.contributor_id for m in members} <= edge_contributors
        (base,) = {m.base_version for m in members}  # every member trained from one version
        sets = _sets(tenant, group)
        assert [len(sets[p].members) for p in ("advertise", "share", "masked_input")] == [3, 3, 3]
        # its securely aggregated sum is the plain sum of its members' clipped updates: the
        # version it made is the version before plus that mean times (1 + staleness)^-0.5
        registry = _Registry(job, versions[base])
        updates = [_retrained_update(registry, m) for m in members]
        needles += [needle for update in updates for needle in _needles(update)]
        bound = SecAggRound.objects.for_tenant(tenant).get(round=group).bound
        clipped_sum = np.sum([np.clip(u.astype(np.float64), -bound, bound) for u in updates], 0)
        before = group.metrics["base_version"]
        staleness = before - base
        assert group.metrics["group_staleness"] == staleness
        weight = (1 + staleness) ** -0.5
        assert group.metrics["group_step_weight"] == pytest.approx(weight)
        w_before = model_version_read(model_version=versions[before]).astype(np.float64)
        np.testing.assert_allclose(
            model_version_read(model_version=versions[group.metrics["version"]]),
            w_before + weight * clipped_sum / 3,
            atol=1e-6,
        )
    # and two groups were in flight at once: a group opened before an earlier one closed
    opened = sorted((g.started_at, g.closed_at) for g in groups)
    assert any(later[0] < earlier[1] for earlier, later in zip(opened, opened[1:], strict=False))
    # and no update is anywhere in the clear
    assert len(needles) > 40
    leaks = [(name, n) for name, data in _haystacks() for n in needles if n in data]
    assert leaks == []
    _quiesce(fc_stack, doomed)


ASYNC_GROUP = {
    "mode": "async",
    "buffer_size": 4,
    "staleness_bound": 2,
    "staleness_weighting": "constant",
}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_edge_worker_cut_off_mid_phase_is_sent_the_phase_request_again(
    fc_stack, tenant, owner, mode
):
    # given three edge workers, one behind a network path the test can cut, and a scripted
    # client that holds its advertise back so the advertise phase stays open
    _core_tenant(tenant, owner)
    proxy = TcpProxy(fc_stack.daphne.port)
    try:
        cut_off = fc_stack.edge_worker(url=proxy.url)
        fc_stack.edge_worker()
        fc_stack.edge_worker()
        release = threading.Event()
        _, held_token = dispatch.contributor_create_anonymous()
        held = ScriptedClient(
            fc_stack.daphne.url, held_token, DISTINCT, "unmask", hold_advertise=release
        )
        held.start()
        workers_online(4, fc_stack)
        contributors_accounted()
        worker_row = Worker.objects.get(contributor_id=cut_off.contributor_id)
        job = _secure_job(
            tenant,
            cohort_size=4,
            min_reports=3,
            partition_clients=4,
            round_deadline_seconds=120,
            **(ASYNC_GROUP if mode == "async" else {}),
        )
        victim = wait_until(
            lambda: (
                Participation.objects.for_tenant(tenant)
                .filter(round__job=job, worker=worker_row)
                .first()
            ),
            timeout_s=30,
            what="the cut-off worker's invite",
            logs=fc_stack.logs,
        )
        round_ = victim.round
        secagg = SecAggRound.objects.for_tenant(tenant).get(round=round_)
        client = next(int(c) for c, pid in secagg.clients.items() if pid == victim.pk)
        wait_until(
            lambda: (
                SecAggMessage.objects.for_tenant(tenant)
                .filter(secagg_round=secagg, phase=SecAggPhase.ADVERTISE, client=client)
                .exists()
            ),
            timeout_s=60,
            what="the cut-off worker's advertise",
            logs=fc_stack.logs,
        )
        # when its network goes away, and the advertise phase then closes (the key list goes
        # to the socket it no longer has)
        proxy.cut()
        wait_until(
            lambda: not Worker.objects.get(pk=worker_row.pk).is_online,
            timeout_s=30,
            what="the server to see the socket close",
            logs=fc_stack.logs,
        )
        release.set()
        wait_until(
            lambda: (
                SecAggRound.objects.for_tenant(tenant).get(pk=secagg.pk).phase
                != SecAggPhase.ADVERTISE
            ),
            timeout_s=30,
            what="the advertise phase to close",
            logs=fc_stack.logs,
        )
        assert (
            not SecAggMessage.objects.for_tenant(tenant)
            .filter(secagg_round=secagg, phase=SecAggPhase.SHARE, client=client)
            .exists()
        )
        proxy.restore()
        # then it reconnects as the same worker, is sent the key list again, and the round
        # closes with it in every phase's set
        job = wait_for_job(job.pk, timeout_s=120, stack=fc_stack)
    finally:
        proxy.close()
    assert proxy.request_lines.count("GET /ws/edge/ HTTP/1.1") >= 2, proxy.request_lines
    assert Worker.objects.get(pk=worker_row.pk).is_online
    assert held.error is None, held.error
    round_.refresh_from_db()
    assert round_.status == RoundStatus.CLOSED
    sets = _sets(tenant, round_)
    for phase in ("advertise", "share", "masked_input", "unmask"):
        assert client in sets[phase].members, (phase, sets[phase].members)
    assert round_.reports == 4
    if mode == "async":  # a secure group: one buffer step, from the version it formed on
        assert (round_.metrics["group_staleness"], round_.metrics["group_step_weight"]) == (0, 1.0)
    _quiesce(fc_stack, held)
