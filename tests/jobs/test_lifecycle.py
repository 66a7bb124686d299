"""Pausing, resuming and cancelling jobs; admission and metering through the port."""

from __future__ import annotations

import hashlib
import struct

import pytest
from django.core.exceptions import ValidationError

from jobs import dispatch, realtime, services
from jobs.metering import NoMetering, WorkRefused, metering, metering_register
from jobs.models import Assignment, AssignmentStatus, JobStatus, TaskStatus
from tenants.roles import Role
from tests.factories import AssignmentFactory, JobFactory, TaskFactory, WorkerFactory

pytestmark = pytest.mark.django_db

OUTPUT = struct.pack("<Q", 42)
OUTPUT_SHA256 = hashlib.sha256(OUTPUT).hexdigest()


@pytest.fixture
def sent(monkeypatch):
    """What went to the channel layer, as (target, message) pairs."""
    messages: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        realtime, "_send", lambda target, message, *, group: messages.append((target, message))
    )
    return messages


@pytest.fixture
def recorded_metering():
    """A metering implementation that records calls (and can refuse admission)."""

    class Recording(NoMetering):
        def __init__(self) -> None:
            self.validated: list = []
            self.refusal = ""

        def admit(self, *, tenant, quote) -> None:  # noqa: ANN001
            if self.refusal:
                raise WorkRefused(self.refusal)

        def task_validated(self, *, task, job) -> None:  # noqa: ANN001
            self.validated.append(task.pk)

    previous = metering()
    recording = Recording()
    metering_register(recording)
    yield recording
    metering_register(previous)  # billing's implementation, once billing registers one


def _job_with_live_replicas(tenant, count: int = 2):  # noqa: ANN001, ANN202
    job = JobFactory(tenant=tenant, task_count=1)
    task = TaskFactory(job=job, active_replicas=count)
    return job, task, AssignmentFactory.create_batch(count, task=task)


def _cancels(sent) -> list[tuple[str, str, str]]:  # noqa: ANN001
    return sorted(
        (target, message["assignment"], message["reason"])
        for target, message in sent
        if message["type"] == "worker.cancel"
    )


@pytest.mark.parametrize("how", ["tenant", "system"])
def test_pause_cancels_running_replicas_and_tells_their_workers(
    tenant, sent, django_capture_on_commit_callbacks, how
):
    # given a running job with two replicas at work
    job, task, replicas = _job_with_live_replicas(tenant)
    # when it is paused by its tenant or by the platform
    with django_capture_on_commit_callbacks(execute=True):
        if how == "tenant":
            services.job_pause(job=job, actor_role=Role.MEMBER)
        else:
            assert services.job_pause_system(job_id=job.pk, reason="Balance exhausted")
    # then the replicas are cancelled, their workers told, and the task no longer counts them
    assert set(Assignment.objects.for_tenant(tenant).values_list("status", flat=True)) == {
        AssignmentStatus.CANCELLED
    }
    assert _cancels(sent) == sorted(
        (r.worker.channel_name, str(r.pk), "job_paused") for r in replicas
    )
    task.refresh_from_db()
    job.refresh_from_db()
    assert (task.active_replicas, task.dispatchable, job.status) == (0, False, JobStatus.PAUSED)


def test_pause_keeps_returned_results(tenant):
    job, task, (running,) = _job_with_live_replicas(tenant, count=1)
    returned = AssignmentFactory(
        task=task, status=AssignmentStatus.RETURNED, output=OUTPUT, output_sha256=OUTPUT_SHA256
    )
    task.active_replicas = 2
    task.save(update_fields=["active_replicas"])
    services.job_pause(job=job, actor_role=Role.MEMBER)
    returned.refresh_from_db()
    task.refresh_from_db()
    assert (returned.status, task.active_replicas) == (AssignmentStatus.RETURNED, 1)


def test_a_paused_replicas_result_is_discarded_and_its_task_handed_out_on_resume(tenant):
    # given a replica cancelled by a pause
    job, task, (replica,) = _job_with_live_replicas(tenant, count=1)
    services.job_pause(job=job, actor_role=Role.MEMBER)
    # when its result arrives anyway
    outcome = dispatch.result_submit(
        contributor_id=replica.contributor_id,
        assignment_id=str(replica.pk),
        output=OUTPUT,
        sha256=OUTPUT_SHA256,
        elapsed_ms=1,
    )
    # then it is discarded, not stored; resuming hands the task out again, even to that worker
    assert outcome.status == "discarded"
    replica.refresh_from_db()
    assert (replica.status, replica.output) == (AssignmentStatus.CANCELLED, None)
    services.job_resume(job=job, actor_role=Role.MEMBER)
    offers = dispatch.assignment_claim(worker_id=replica.worker_id, count=4)
    assert [offer.task_index for offer in offers] == [task.index]


def test_cancel_tells_workers_and_discards_late_results(
    tenant, sent, django_capture_on_commit_callbacks
):
    job, task, replicas = _job_with_live_replicas(tenant)
    with django_capture_on_commit_callbacks(execute=True):
        services.job_cancel(job=job, actor_role=Role.MEMBER)
    assert _cancels(sent) == sorted(
        (r.worker.channel_name, str(r.pk), "job_cancelled") for r in replicas
    )
    outcome = dispatch.result_submit(
        contributor_id=replicas[0].contributor_id,
        assignment_id=str(replicas[0].pk),
        output=OUTPUT,
        sha256=OUTPUT_SHA256,
        elapsed_ms=1,
    )
    assert outcome.status == "discarded"
    task.refresh_from_db()
    assert task.status == TaskStatus.CANCELLED


def test_refused_admission_is_a_validation_error_and_changes_nothing(tenant, recorded_metering):
    job = JobFactory(tenant=tenant, status=JobStatus.PAUSED)
    recorded_metering.refusal = "Your balance cannot cover the next task."
    with pytest.raises(ValidationError) as refused:
        services.job_resume(job=job, actor_role=Role.MEMBER)
    assert refused.value.messages == ["Your balance cannot cover the next task."]
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED


def test_a_validated_task_is_metered_once_and_the_job_completes(
    tenant, recorded_metering, django_capture_on_commit_callbacks
):
    # given a task with two replicas on two contributors
    job, task, replicas = _job_with_live_replicas(tenant)
    # when both return the same output, and one replays it
    for replica in [*replicas, replicas[0]]:
        with django_capture_on_commit_callbacks(execute=True):
            dispatch.result_submit(
                contributor_id=replica.contributor_id,
                assignment_id=str(replica.pk),
                output=OUTPUT,
                sha256=OUTPUT_SHA256,
                elapsed_ms=1,
            )
    # then the task is metered once and the job reduced (a tenant kernel: no summary declared)
    assert recorded_metering.validated == [task.pk]
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert job.result == {"reducer": "sum_u64", "value": [42]}


def test_a_known_answer_task_is_never_metered(tenant, recorded_metering):
    job = JobFactory(tenant=tenant, task_count=1)
    task = TaskFactory(
        job=job, target_replicas=1, active_replicas=1, known_answer_sha256=OUTPUT_SHA256
    )
    replica = AssignmentFactory(task=task, worker=WorkerFactory())
    outcome = dispatch.result_submit(
        contributor_id=replica.contributor_id,
        assignment_id=str(replica.pk),
        output=OUTPUT,
        sha256=OUTPUT_SHA256,
        elapsed_ms=1,
    )
    task.refresh_from_db()
    assert (outcome.status, task.status, recorded_metering.validated) == (
        "accepted",
        TaskStatus.VALIDATED,
        [],
    )
