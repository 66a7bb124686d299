"""factory_boy factories for the test suite."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import factory
from django.utils import timezone

from jobs.kernel_models import Reducer
from jobs.models import (
    Assignment,
    AssignmentStatus,
    Contributor,
    Job,
    JobStatus,
    Kernel,
    Task,
    Worker,
)
from jobs.worker_models import WorkerKind
from tenants.models import Membership, Tenant, User
from tenants.roles import Role
from tenants.tiers import Tier

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.org")
    username = factory.SelfAttribute("email")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):  # noqa: N805
        if create:
            obj.save()


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")
    tier = Tier.COMMUNITY


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.MEMBER


# ---------------------------------------------------------------- jobs


class KernelFactory(factory.django.DjangoModelFactory):
    """A tenant's kernel row (no module bytes: for tests of rows, not of running kernels; the
    built-in kernels come from the ``kernels`` fixture)."""

    class Meta:
        model = Kernel

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"kernel-{n}")
    version = "1.0.0"
    sha256 = factory.Sequence(lambda n: hashlib.sha256(f"kernel-{n}".encode()).hexdigest())
    size_bytes = 1024
    reducer = Reducer.SUM_U64
    output_bytes = 8


class JobFactory(factory.django.DjangoModelFactory):
    """A running job with no tasks; add them with ``TaskFactory(job=...)``."""

    class Meta:
        model = Job

    tenant = factory.SubFactory(TenantFactory)
    kernel = factory.SubFactory(KernelFactory, tenant=factory.SelfAttribute("..tenant"))
    name = factory.Sequence(lambda n: f"job {n}")
    params = factory.LazyFunction(list)
    range_start = 0
    range_end = 1000
    chunk_size = 100
    seed = 7
    quorum = 2
    max_replicas = 10
    status = JobStatus.RUNNING
    task_count = 0


class TaskFactory(factory.django.DjangoModelFactory):
    """An open task of a job (dispatchable while its job runs and it needs replicas)."""

    class Meta:
        model = Task

    job = factory.SubFactory(JobFactory)
    tenant = factory.SelfAttribute("job.tenant")
    index = factory.Sequence(lambda n: n)
    lo = factory.LazyAttribute(lambda t: t.index * 100)
    hi = factory.LazyAttribute(lambda t: t.lo + 100)
    work_units = 100
    target_replicas = factory.SelfAttribute("job.quorum")
    dispatchable = factory.LazyAttribute(
        lambda t: t.job.status == JobStatus.RUNNING and t.active_replicas < t.target_replicas
    )


class ContributorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Contributor

    display_name = factory.Sequence(lambda n: f"contributor {n}")


class WorkerFactory(factory.django.DjangoModelFactory):
    """An online edge worker; ``channel_name`` is where ``worker.*`` messages are sent."""

    class Meta:
        model = Worker

    contributor = factory.SubFactory(ContributorFactory)
    kind = WorkerKind.EDGE
    slots = 4
    is_online = True
    channel_name = factory.Sequence(lambda n: f"worker-channel-{n}")


class AssignmentFactory(factory.django.DjangoModelFactory):
    """A live replica of a task (its lease held); counts against the task's active replicas only
    if the test says so (``Task.active_replicas``)."""

    class Meta:
        model = Assignment

    task = factory.SubFactory(TaskFactory)
    job = factory.SelfAttribute("task.job")
    tenant = factory.SelfAttribute("task.tenant")
    worker = factory.SubFactory(WorkerFactory)
    contributor = factory.SelfAttribute("worker.contributor")
    status = AssignmentStatus.ASSIGNED
    lease_expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(seconds=60))
