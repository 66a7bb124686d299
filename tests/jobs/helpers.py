"""Test helpers: create FC jobs, connect workers (rows from tests/factories.py) and run offers
through the real kernels."""

from __future__ import annotations

import hashlib
from functools import cache

from ccgsc_worker import abi
from ccgsc_worker.kernel import KernelRunner
from jobs import dispatch, services
from jobs.dispatch.batch import ResultItem
from jobs.kernels import kernel_module_bytes
from jobs.models import Job, Kernel
from tenants.models import Tenant
from tenants.roles import Role
from tests.factories import ContributorFactory

HELLO = {
    "v": 1,
    "type": "hello",
    "token": "x" * 20,
    "client": {"kind": "edge", "version": "test"},
    "capabilities": {"cores": 2, "simd": True},
    "slots": 4,
}


def fc_job(  # noqa: ANN003
    tenant: Tenant,
    owner,  # noqa: ANN001
    kernel: Kernel,
    *,
    tasks: int,
    chunk_size: int = 1000,
    range_start: int = 1,
    quorum: int = 2,
    seed: int = 5,
    start: bool = True,
    start_after: bool = False,
    **spec_overrides,
) -> Job:
    """An FC job the tenant's owner creates: ``tasks`` tasks of ``chunk_size`` numbers from
    ``range_start``, no parameters, other JobSpec fields from ``spec_overrides``. ``job_create``
    starts it unless ``start`` is false (it stays a draft); with ``start_after`` it is created as
    a draft and then started by a ``job_start`` of its own."""
    spec = {
        "name": "fc",
        "kernel": kernel,
        "range_start": range_start,
        "range_end": range_start + tasks * chunk_size,
        "chunk_size": chunk_size,
        "params": {},
        "quorum": quorum,
        "seed": seed,
        **spec_overrides,
    }
    job = services.job_create(
        tenant=tenant,
        actor=owner,
        actor_role=Role.OWNER,
        spec=services.JobSpec(**spec),
        start=start and not start_after,
    )
    return services.job_start(job=job, actor_role=Role.OWNER) if start_after else job


def new_worker(slots: int = 4, **contributor_fields):  # noqa: ANN003, ANN201
    """A contributor (an anonymous device unless told otherwise) with one connected worker;
    returns (session, token)."""
    contributor = ContributorFactory(**contributor_fields)
    token = dispatch.worker_token_issue(contributor=contributor)
    session = dispatch.worker_connect(
        contributor=contributor, hello={**HELLO, "slots": slots}, channel_name=""
    )
    return session, token


@cache
def _runner(sha256: str) -> KernelRunner:
    kernel = Kernel.objects.filter(sha256=sha256).order_by("-builtin").first()
    return KernelRunner(kernel_module_bytes(kernel), sha256)


def run_offer(offer: dispatch.Offer) -> bytes:
    """Compute an offer's output with the real kernel."""
    return _runner(offer.kernel_sha256).run(
        abi.encode_input(offer.lo, offer.hi, offer.seed, offer.params)
    )


def submit(session, offer, output: bytes | None = None):  # noqa: ANN001, ANN201
    """Submit an offer's result (computed, or the given bytes)."""
    data = run_offer(offer) if output is None else output
    return dispatch.result_submit(
        contributor_id=session.contributor_id,
        assignment_id=str(offer.assignment_id),
        output=data,
        sha256=hashlib.sha256(data).hexdigest(),
        elapsed_ms=1,
    )


def result_item(session, offer, *, output: bytes | None = None, refill: int = 0):  # noqa: ANN001, ANN201
    """An offer's result (computed, or the given bytes) as the flusher takes it; with
    ``refill``, it also claims that many tasks for the session's worker."""
    data = run_offer(offer) if output is None else output
    return ResultItem(
        contributor_id=session.contributor_id,
        assignment_id=str(offer.assignment_id),
        output=data,
        sha256=hashlib.sha256(data).hexdigest(),
        elapsed_ms=1,
        worker_id=session.worker_id,
        refill=refill,
    )


def work_until_done(sessions, *, max_rounds: int = 1000) -> int:  # noqa: ANN001
    """Let honest workers claim and submit until nothing is left; returns replicas done."""
    done = 0
    for _ in range(max_rounds):
        progressed = False
        for session in sessions:
            for offer in dispatch.assignment_claim(worker_id=session.worker_id, count=4):
                submit(session, offer)
                done += 1
                progressed = True
        if not progressed:
            return done
    raise AssertionError("work did not finish")
