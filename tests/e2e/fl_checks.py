"""What the FL end-to-end tests check after a run: waits on database state (never on time
alone), the money and credits of each closed round exactly once, and a round's new model
recomputed from its included clients' own training calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from billing import ledger
from billing.models import AccountKind, JournalEntry, UsageRecord, UsageStatus
from jobs.federated.client import TrainConfig, client_train, load_training_kernel
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.models import Job
from jobs.services.fl_data import partition_shards
from jobs.services.model_registry import model_version_read

MINIMAL_MLP = {"model_kernel": "mlp", "model_sizes": [64, 512, 512, 10]}
# 301,066 parameters: an update is 1,204,296 bytes, five chunks of at most 256 KiB, so an
# upload has a middle to interrupt.


def wait_until(
    predicate: Callable[[], Any], *, timeout_s: float, what: str, logs: Callable[[], str]
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` and the logs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")


def workers_online(count: int, stack: Any) -> None:
    """Wait (up to 60 s) until at least ``count`` workers are online; fail with the stack's logs."""
    from jobs.models import Worker

    wait_until(
        lambda: Worker.objects.filter(is_online=True).count() >= count,
        timeout_s=60,
        what=f"{count} workers online",
        logs=stack.logs,
    )


def contributors_accounted() -> None:
    """Give every contributor an account: a secure or DP cohort admits few anonymous ones (the
    eligibility rule, docs/security.md)."""
    from jobs.models import Contributor
    from tests.factories import UserFactory

    for contributor in Contributor.objects.filter(user__isnull=True):
        contributor.user = UserFactory()
        contributor.save(update_fields=["user"])


def closed_rounds(job: Job) -> list[Round]:
    return list(
        Round.objects.for_tenant(job.tenant)
        .filter(job=job, status=RoundStatus.CLOSED)
        .order_by("number")
    )


def assert_charged_and_credited_once(
    job: Job, *, balance_before_cents: int, logs: Callable[[], str]
) -> None:
    """Each closed round has exactly one usage row, charged once from the tenant's balance, and
    exactly the contributors whose updates it folded earned one credit each for it."""
    numbers = [r.number for r in closed_rounds(job)]
    usage = UsageRecord.objects.for_tenant(job.tenant).filter(job=job)
    assert sorted(usage.values_list("round_number", flat=True)) == numbers
    wait_until(
        lambda: not usage.exclude(status=UsageStatus.CHARGED).exists(),
        timeout_s=30,
        what="every round's usage to be charged",
        logs=logs,
    )
    charges = JournalEntry.objects.filter(
        idempotency_key__in=[f"charge:usage:{pk}" for pk in usage.values_list("pk", flat=True)]
    )
    assert charges.count() == len(numbers)
    spent = sum(usage.values_list("amount_cents", flat=True))
    balance = ledger.account_get(AccountKind.TENANT_BALANCE, tenant=job.tenant)
    balance.refresh_from_db()
    assert balance.balance_cents == balance_before_cents - spent
    included = Participation.objects.for_tenant(job.tenant).filter(round__job=job, included=True)
    assert not included.filter(folded_round__isnull=True).exists()
    expected = {
        f"credit:round:{job.pk}:{p.folded_round.number}:{p.contributor_id}"
        for p in included.select_related("folded_round")
    }
    credits = JournalEntry.objects.filter(idempotency_key__startswith=f"credit:round:{job.pk}:")
    wait_until(
        lambda: credits.count() >= len(expected),
        timeout_s=30,
        what="the rounds' contributor credits",
        logs=logs,
    )
    assert set(credits.values_list("idempotency_key", flat=True)) == expected
    assert ledger.reconcile().ok


def recomputed_weights(job: Job, round_: Round) -> np.ndarray:
    """The round's new model from scratch: each update its buffer folded, retrained from the
    version its client started from (the edge worker's training is bit for bit the platform's),
    weighted by samples, discounted by (1 + staleness)^-a in async mode, plus FedAvg's step.
    Written from the papers' formulas, not from the platform's code."""
    config = job.fl_config
    versions = ModelVersion.objects.for_tenant(job.tenant).filter(job=job)
    base_version = round_.metrics["base_version"]
    shards = partition_shards(
        dataset=config.dataset,
        partition=config.partition,
        clients=config.partition_clients,
        seed=job.seed,
        alpha=config.dirichlet_alpha,
        per_client=config.shards_per_client or 2,
    )
    kernel = load_training_kernel(config.model_kernel)
    total = None
    total_weight = 0.0
    examples = 0
    for participation in round_.folded_participations.order_by("pk"):
        start = np.asarray(
            model_version_read(model_version=versions.get(version=participation.base_version)),
            dtype=np.float32,
        )
        invite = participation.invite
        x, y, _ = shards[invite["data"]["client_index"]]
        hyper = invite["hyperparameters"]
        update = client_train(
            kernel,
            sizes=tuple(config.model_sizes),
            weights=start,
            x=x,
            y=y,
            config=TrainConfig(
                epochs=hyper["local_epochs"],
                batch_size=hyper["batch_size"],
                learning_rate=hyper["learning_rate"],
                momentum=hyper["momentum"] or 0.0,
                proximal_mu=hyper["proximal_mu"] or 0.0,
            ),
            seed=int(invite["seed"]),
        )
        weight = float(update.samples)
        if config.mode == "async" and config.staleness_weighting != "constant":
            staleness = base_version - participation.base_version
            weight *= (1.0 + staleness) ** -(config.staleness_exponent or 0.5)
        contribution = weight * update.update.astype(np.float64)
        total = contribution if total is None else total + contribution
        total_weight += weight
        examples += update.samples
    assert total is not None, f"round {round_.number} folded nothing"
    base = np.asarray(
        model_version_read(model_version=versions.get(version=base_version)), dtype=np.float32
    )
    # FedBuff (async) divides the discounted sum by the examples; FedAvg by the weights.
    mean = (total / (examples if config.mode == "async" else total_weight)).astype(np.float32)
    return (base.astype(np.float64) + mean).astype(np.float32)


def assert_versions_recompute(job: Job) -> None:
    """Each closed round's version is the FedAvg of exactly the updates its buffer folded (an
    update folded twice, lost, or weighted otherwise would give other weights)."""
    for round_ in closed_rounds(job):
        version = ModelVersion.objects.for_tenant(job.tenant).get(
            job=job, version=round_.metrics["version"]
        )
        stored = np.asarray(model_version_read(model_version=version), dtype=np.float32)
        np.testing.assert_allclose(stored, recomputed_weights(job, round_), rtol=1e-6, atol=1e-6)
