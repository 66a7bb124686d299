"""Django admin for kernels, jobs, tasks, assignments, workers and contributors, and the
federated learning records (configurations, rounds, participations, model versions)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from jobs import services
from jobs.analytics_models import AnalyticsQuery, AnalyticsResult
from jobs.counter_models import JobCounterDelta, JobCounters
from jobs.fl_artifact_models import UpdateUpload
from jobs.models import (
    Assignment,
    Contributor,
    FlConfig,
    Job,
    JobEvent,
    JobStatus,
    Kernel,
    ModelVersion,
    Participation,
    Round,
    Task,
    Worker,
)
from jobs.secagg_models import SecAggMessage, SecAggPhaseSet, SecAggRound
from tenants.admin_base import ReadOnlyAdmin, UnscopedAdmin
from tenants.roles import Role
from tenants.services import audit_record


@admin.register(Kernel)
class KernelAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "tenant", "reducer", "builtin", "size_bytes", "created_at")
    list_filter = ("builtin", "reducer")
    search_fields = ("name", "sha256", "tenant__name")
    readonly_fields = ("sha256", "size_bytes", "created_at")
    raw_id_fields = ("tenant",)


@admin.register(Job)
class JobAdmin(UnscopedAdmin):
    list_display = (
        "name",
        "tenant",
        "kind",
        "kernel",
        "status",
        "task_count",
        "tasks_validated",
        "priority",
        "created_at",
    )
    list_filter = ("kind", "status", "kernel__name")
    search_fields = ("name", "id", "tenant__name")
    readonly_fields = (
        "task_count",
        "tasks_validated",
        "tasks_failed",
        "result",
        "result_sha256",
        "created_at",
        "started_at",
        "completed_at",
    )
    raw_id_fields = ("tenant", "kernel", "fl_config", "created_by")
    actions = ["pause_jobs", "resume_jobs", "cancel_jobs"]

    def _control(self, request: HttpRequest, queryset: QuerySet[Job], action: str) -> None:
        done, refused = 0, 0
        for job in queryset:
            try:
                services.job_control(
                    tenant=job.tenant, job_id=job.pk, role=Role.OWNER, action=action
                )
                done += 1
            except Exception:  # noqa: BLE001 - report and continue with the others
                refused += 1
            else:
                audit_record(
                    tenant=job.tenant,
                    actor=request.user,
                    action=f"admin.job.{action}",
                    target=str(job.pk),
                )
        self.message_user(
            request,
            f"{action}: {done} job(s); {refused} refused.",
            messages.SUCCESS if not refused else messages.WARNING,
        )

    @admin.action(description="Pause selected jobs")
    def pause_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._control(request, queryset.filter(status=JobStatus.RUNNING), "pause")

    @admin.action(description="Resume selected jobs")
    def resume_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._control(request, queryset.filter(status=JobStatus.PAUSED), "resume")

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._control(request, queryset, "cancel")


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    list_display = (
        "job",
        "index",
        "lo",
        "hi",
        "status",
        "target_replicas",
        "active_replicas",
        "validated_at",
    )
    list_filter = ("status",)
    search_fields = ("job__name", "job__id")
    raw_id_fields = ("job", "tenant")


@admin.register(Assignment)
class AssignmentAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "job",
        "task",
        "worker",
        "contributor",
        "status",
        "assigned_at",
        "lease_expires_at",
        "credited_at",
    )
    list_filter = ("status",)
    search_fields = ("id", "job__name", "output_sha256")
    raw_id_fields = ("job", "task", "worker", "contributor", "tenant")


class WorkerAdminActions:
    @admin.action(description="Ban selected")
    def ban(self, request: HttpRequest, queryset: QuerySet) -> None:
        for obj in queryset:
            obj.is_banned = True
            obj.save(update_fields=["is_banned"])
            audit_record(
                tenant=None,
                actor=request.user,
                action=f"admin.{obj._meta.model_name}.banned",
                target=str(obj.pk),
            )
        self.message_user(request, f"Banned {queryset.count()}.", messages.SUCCESS)  # type: ignore[attr-defined]

    @admin.action(description="Lift ban on selected")
    def unban(self, request: HttpRequest, queryset: QuerySet) -> None:
        for obj in queryset:
            obj.is_banned = False
            obj.save(update_fields=["is_banned"])
            audit_record(
                tenant=None,
                actor=request.user,
                action=f"admin.{obj._meta.model_name}.unbanned",
                target=str(obj.pk),
            )
        self.message_user(request, f"Unbanned {queryset.count()}.", messages.SUCCESS)  # type: ignore[attr-defined]


@admin.register(Worker)
class WorkerAdmin(WorkerAdminActions, admin.ModelAdmin):
    list_display = (
        "id",
        "contributor",
        "kind",
        "is_online",
        "slots",
        "consecutive_valid",
        "validated_replicas",
        "invalid_replicas",
        "errored_replicas",
        "expired_replicas",
        "last_seen_at",
        "is_banned",
    )
    list_filter = ("kind", "is_online", "is_banned")
    search_fields = ("id", "contributor__user__email", "user_agent")
    raw_id_fields = ("contributor",)
    actions = ["ban", "unban"]


@admin.register(Contributor)
class ContributorAdmin(WorkerAdminActions, admin.ModelAdmin):
    list_display = (
        "__str__",
        "user",
        "pool_tenant",
        "validated_replicas",
        "validated_work_units",
        "is_banned",
        "created_at",
    )
    list_filter = ("is_banned",)
    search_fields = ("id", "user__email", "display_name")
    raw_id_fields = ("user", "pool_tenant")
    actions = ["ban", "unban"]


@admin.register(JobEvent)
class JobEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "job", "kind", "message")
    list_filter = ("kind",)
    search_fields = ("job__name", "message")


# Federated learning: read-only. A configuration is fixed once its job exists, rounds and
# participations are the round services' records, and a model version is content-addressed.
@admin.register(FlConfig)
class FlConfigAdmin(ReadOnlyAdmin):
    list_display = ("id", "tenant", "model_kernel", "server_strategy", "rounds", "mode")
    list_filter = ("model_kernel", "server_strategy", "mode", "data_source")
    search_fields = ("id", "tenant__name")


@admin.register(Round)
class RoundAdmin(ReadOnlyAdmin):
    list_display = ("job", "number", "status", "cohort_size", "reports", "dropouts", "started_at")
    list_filter = ("status",)
    search_fields = ("job__name", "job__id")


@admin.register(Participation)
class ParticipationAdmin(ReadOnlyAdmin):
    list_display = ("round", "contributor", "worker", "status", "samples", "included")
    list_filter = ("status", "included")


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ("job", "version", "sha256", "size_bytes", "created_at")
    search_fields = ("sha256", "job__name", "job__id")


@admin.register(UpdateUpload)
class UpdateUploadAdmin(ReadOnlyAdmin):
    list_display = ("participation", "status", "total_bytes", "chunk_size", "created_at")
    list_filter = ("status",)


@admin.register(SecAggRound)
class SecAggRoundAdmin(ReadOnlyAdmin):
    list_display = ("round", "phase", "phase_deadline", "threshold", "min_survivors", "created_at")
    list_filter = ("phase",)
    search_fields = ("round__job__name", "round__job__id")
    # The session id and graph seed are key material of the round: not shown.
    exclude = ("session", "graph_seed")


@admin.register(SecAggPhaseSet)
class SecAggPhaseSetAdmin(ReadOnlyAdmin):
    list_display = ("secagg_round", "phase", "fixed_at")
    list_filter = ("phase",)


@admin.register(SecAggMessage)
class SecAggMessageAdmin(ReadOnlyAdmin):
    list_display = ("secagg_round", "phase", "client", "received_at")
    list_filter = ("phase",)
    exclude = ("payload",)  # public keys and sealed shares: nothing an admin needs to read


# Analytics: the query is fixed once its job exists; a result is the round's released aggregate.
@admin.register(AnalyticsQuery)
class AnalyticsQueryAdmin(ReadOnlyAdmin):
    list_display = ("job", "tenant", "max_rows")
    search_fields = ("job__name", "job__id")


@admin.register(AnalyticsResult)
class AnalyticsResultAdmin(ReadOnlyAdmin):
    list_display = ("job", "round", "contributors", "rows", "differentially_private", "created_at")
    list_filter = ("differentially_private",)


# The director's counters: written by database triggers and folded by the beat, never by hand.
@admin.register(JobCounters)
class JobCountersAdmin(ReadOnlyAdmin):
    list_display = ("job", "tasks_open", "tasks_validated", "replicas_running", "replicas_valid")


@admin.register(JobCounterDelta)
class JobCounterDeltaAdmin(ReadOnlyAdmin):
    list_display = ("id", "job", "tasks_validated", "replicas_valid")
