"""Jobs, tasks, assignments (replicas) and job events; the app's other models live in their own
modules (kernels in ``kernel_models``, contributors and workers in ``worker_models``, FL, secure
aggregation, analytics and counters further down) and are imported here, so ``jobs.models`` is
where every model of the app is imported from.

PostgreSQL is the source of truth for every lease: a task is claimed with
``SELECT ... FOR UPDATE SKIP LOCKED`` and an assignment's lease is a column, so any number of
Daphne processes can dispatch and a crash loses nothing.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from jobs.kernel_models import Kernel
from jobs.worker_models import Contributor, Worker
from tenants.models import Tenant
from tenants.scoping import TenantOwnedModel
from tenants.tiers import JobKind


class JobStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    REDUCING = "reducing", "Reducing"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_JOB_STATUSES = (JobStatus.DRAFT, JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.REDUCING)


class Job(TenantOwnedModel):
    """A job: federated computing (a kernel over [range_start, range_end) split into tasks) or
    federated learning (rounds of training configured by ``fl_config``).

    The FC columns are nullable because an FL job has none of them; ``job_kind_fields`` requires
    them for ``kind="fc"`` and requires ``fl_config`` for ``kind="fl"`` and ``kind="analytics"``
    (federated analytics runs on the FL round machinery, docs/analytics.md).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=10, choices=JobKind.choices, default=JobKind.FC)
    kernel = models.ForeignKey(
        Kernel, on_delete=models.PROTECT, null=True, blank=True, related_name="jobs"
    )
    params = models.JSONField(default=list, blank=True)
    range_start = models.BigIntegerField(null=True, blank=True)
    range_end = models.BigIntegerField(null=True, blank=True)
    chunk_size = models.BigIntegerField(null=True, blank=True)
    fl_config = models.OneToOneField(
        "jobs.FlConfig", on_delete=models.PROTECT, null=True, blank=True, related_name="job"
    )
    seed = models.BigIntegerField(default=0)
    quorum = models.PositiveSmallIntegerField(default=2)
    max_replicas = models.PositiveSmallIntegerField(default=5)
    adaptive_replication = models.BooleanField(default=False)
    # Enterprise: only workers the tenant registered (its private pool) receive these tasks.
    private_pool = models.BooleanField(default=False)
    lease_seconds = models.PositiveIntegerField(default=60)
    priority = models.SmallIntegerField(default=0)
    deadline = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.DRAFT)
    status_reason = models.CharField(max_length=300, blank=True)
    task_count = models.PositiveIntegerField(default=0)
    tasks_validated = models.PositiveIntegerField(default=0)
    tasks_failed = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    result_bytes = models.BinaryField(null=True, blank=True)
    result_sha256 = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["status", "-priority", "created_at"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(range_start__gte=0) & Q(range_end__gt=F("range_start")),
                name="job_range_valid",
            ),
            models.CheckConstraint(condition=Q(chunk_size__gt=0), name="job_chunk_positive"),
            models.CheckConstraint(
                condition=(
                    Q(
                        kind=JobKind.FC,
                        kernel__isnull=False,
                        range_start__isnull=False,
                        range_end__isnull=False,
                        chunk_size__isnull=False,
                        fl_config__isnull=True,
                    )
                    | Q(kind=JobKind.FL, fl_config__isnull=False)
                    | Q(kind=JobKind.ANALYTICS, fl_config__isnull=False)
                ),
                name="job_kind_fields",
            ),
            models.CheckConstraint(
                condition=Q(quorum__gte=1) & Q(max_replicas__gte=F("quorum")),
                name="job_replicas_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def progress_percent(self) -> int:
        if not self.task_count:
            return 0
        return int(100 * self.tasks_validated / self.task_count)

    @property
    def is_finished(self) -> bool:
        return self.status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class TaskStatus(models.TextChoices):
    OPEN = "open", "Open"
    VALIDATED = "validated", "Validated"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# Claim order: the order in which dispatchable tasks are handed out, and the order of the
# dispatcher's queue index (``task_dispatch_queue``). A query over the queue that orders by it
# (with a LIMIT) walks that index from its head.
DISPATCH_ORDER = ("-priority", "id")


class Task(TenantOwnedModel):
    """One slice of a job. Dispatchable while open and fewer replicas run than it needs."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    # No index of its own: (job, status, id) and (job, index) lead with it, and every write that
    # queues, claims or closes a task touches each of the task's indexes.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="tasks", db_index=False)
    index = models.PositiveIntegerField()
    lo = models.BigIntegerField()
    hi = models.BigIntegerField()
    work_units = models.BigIntegerField(default=0)
    status = models.CharField(max_length=20, choices=TaskStatus.choices, default=TaskStatus.OPEN)
    # Replicas wanted / in flight or returned. Dispatchable when active < target.
    target_replicas = models.PositiveSmallIntegerField()
    active_replicas = models.PositiveSmallIntegerField(default=0)
    priority = models.SmallIntegerField(default=0)
    private_pool = models.BooleanField(default=False)
    dispatchable = models.BooleanField(default=False, db_index=False)
    # The task whose claim means its job's queue ran low: the fill marks one per top-up, at the
    # low-water mark, and a claim that takes it asks for the next fill (jobs.dispatch.queue_fill).
    queue_low_mark = models.BooleanField(default=False)
    # Known-answer tasks check workers; they are not part of the job's result.
    known_answer_sha256 = models.CharField(max_length=64, blank=True)
    canonical_sha256 = models.CharField(max_length=64, blank=True)
    canonical_output = models.BinaryField(null=True, blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="task_job_index_unique"),
            models.CheckConstraint(condition=Q(hi__gt=F("lo")), name="task_range_valid"),
        ]
        indexes = [
            # The dispatcher's queue: only dispatchable tasks, in priority order.
            models.Index(
                fields=list(DISPATCH_ORDER),
                name="task_dispatch_queue",
                condition=Q(dispatchable=True),
            ),
            # A job's tasks by status in claim order (a job's tasks share its priority): a fill
            # walks the job's open tasks from the lowest id and stops after its chunk. On (job,
            # status) alone it read every open task of the job and sorted them (57,000 index
            # entries and heap rows per fill of a 60,000-task job, whatever the chunk).
            models.Index(fields=["job", "status", "id"], name="task_job_status_id"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.index}"

    @property
    def is_known_answer(self) -> bool:
        return bool(self.known_answer_sha256)


class AssignmentStatus(models.TextChoices):
    ASSIGNED = "assigned", "Assigned (lease held)"
    RETURNED = "returned", "Returned, awaiting quorum"
    VALID = "valid", "Valid"
    INVALID = "invalid", "Invalid"
    ERROR = "error", "Error"
    EXPIRED = "expired", "Lease expired"
    CANCELLED = "cancelled", "Cancelled"
    LATE = "late", "Returned after validation"


# Replicas that hold or gave an answer. A contributor has at most one of these per task; a replica
# that expired, errored or was cancelled does not count, so a small pool can retry the task.
COUNTED_REPLICA_STATUSES = (
    AssignmentStatus.ASSIGNED,
    AssignmentStatus.RETURNED,
    AssignmentStatus.VALID,
    AssignmentStatus.INVALID,
    AssignmentStatus.LATE,
)


class Assignment(TenantOwnedModel):
    """One replica of a task on one worker, with its lease and, once returned, its result."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    # job and worker: no index of their own; (job, status) and (worker, status) lead with them,
    # and every replica claimed or returned writes each of the assignment's indexes.
    job = models.ForeignKey(
        Job, on_delete=models.CASCADE, related_name="assignments", db_index=False
    )
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assignments")
    worker = models.ForeignKey(
        Worker, on_delete=models.PROTECT, related_name="assignments", db_index=False
    )
    contributor = models.ForeignKey(
        Contributor, on_delete=models.PROTECT, related_name="assignments"
    )
    status = models.CharField(
        max_length=20, choices=AssignmentStatus.choices, default=AssignmentStatus.ASSIGNED
    )
    assigned_at = models.DateTimeField(auto_now_add=True)
    lease_expires_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    returned_at = models.DateTimeField(null=True, blank=True)
    output = models.BinaryField(null=True, blank=True)
    output_sha256 = models.CharField(max_length=64, blank=True)
    elapsed_ms = models.PositiveIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=30, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    # Set once, under the task's row lock, when this replica is credited.
    credited_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-assigned_at"]
        constraints = [
            # Replicas of a task come from distinct contributors (and so distinct workers).
            models.UniqueConstraint(
                fields=["task", "contributor"],
                condition=Q(status__in=COUNTED_REPLICA_STATUSES),
                name="assignment_task_contributor_unique",
            ),
        ]
        indexes = [
            models.Index(
                fields=["lease_expires_at"],
                name="assignment_live_leases",
                condition=Q(status="assigned"),
            ),
            models.Index(fields=["job", "status"]),
            models.Index(fields=["worker", "status"]),
        ]

    def __str__(self) -> str:
        return f"{self.task} on {self.worker}"


class JobEvent(TenantOwnedModel):
    """A line of a job's history, shown in the director."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=40)
    message = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["job", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


# Models that reference these live in their own modules; importing them here registers them
# with the app.
from jobs.analytics_models import AnalyticsQuery, AnalyticsResult  # noqa: E402, F401
from jobs.counter_models import JobCounters  # noqa: E402, F401
from jobs.fl_artifact_models import ModelVersion, UpdateUpload  # noqa: E402, F401
from jobs.fl_models import FlConfig, Participation, Round  # noqa: E402, F401
from jobs.secagg_models import SecAggMessage, SecAggPhaseSet, SecAggRound  # noqa: E402, F401
