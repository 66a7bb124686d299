"""The dispatch plane's services: worker identity, claiming tasks, heartbeats, results, leases.

Dispatch crosses tenants by design (a volunteer's browser serves every tenant's jobs), so the
queries here are explicitly ``unscoped()``. Invariants, all enforced under row locks:
- a task's ``active_replicas`` counts its replicas that hold a lease or returned a result;
  it is dispatchable while it is open, its job runs and ``active_replicas < target_replicas``;
- an assignment moves out of ``assigned`` exactly once (result, error, expiry or cancel), so a
  replica is counted, validated and credited once whatever is retried or replayed.

Modules: ``tokens`` (contributors and tokens), ``sessions`` (worker sessions), ``claim`` (claim
and heartbeat), ``results`` (results and validation over ``jobs.quorum``), ``sweeps``; group
commit in ``flusher`` and ``batch*``; idle sockets, wakes and their re-check in ``idle``.
"""

from jobs.dispatch.claim import (
    HEARTBEAT_MS,
    SPOT_CHECK_FLOOR,
    TRUST_THRESHOLD,
    Offer,
    assignment_claim,
    assignment_heartbeat,
)
from jobs.dispatch.results import ResultOutcome, assignment_error, result_submit
from jobs.dispatch.sessions import (
    WorkerSession,
    worker_connect,
    worker_disconnect,
    worker_set_slots,
)
from jobs.dispatch.sweeps import job_deadline_sweep, lease_sweep
from jobs.dispatch.tokens import (
    TOKEN_SALT,
    contributor_claim,
    contributor_create_anonymous,
    contributor_for_user,
    contributor_revoke_tokens,
    pool_worker_register,
    worker_token_issue,
    worker_token_read,
    worker_token_verify,
)

__all__ = [
    "HEARTBEAT_MS",
    "SPOT_CHECK_FLOOR",
    "TOKEN_SALT",
    "TRUST_THRESHOLD",
    "Offer",
    "ResultOutcome",
    "WorkerSession",
    "assignment_claim",
    "assignment_error",
    "assignment_heartbeat",
    "contributor_claim",
    "contributor_create_anonymous",
    "contributor_for_user",
    "contributor_revoke_tokens",
    "job_deadline_sweep",
    "lease_sweep",
    "pool_worker_register",
    "result_submit",
    "worker_connect",
    "worker_disconnect",
    "worker_set_slots",
    "worker_token_issue",
    "worker_token_read",
    "worker_token_verify",
]
