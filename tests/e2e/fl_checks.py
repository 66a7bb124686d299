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
from jobs.fl_models import ModelVersion, Participation, Round, RoundStatus
from jobs.fl_shards import partition_shards
from jobs.models import Job
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
    expected = {
        f"credit:round:{job.pk}:{p.round.number}:{p.contributor_id}"
        for p in included.select_related("round")
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
    """The sync round's new model from scratch: each included participation's training call
    (the edge worker's is bit for bit the platform's), folded by samples, plus FedAvg's step."""
    config = job.fl_config
    base = ModelVersion.objects.for_tenant(job.tenant).get(
        job=job, version=round_.metrics["base_version"]
    )
    weights = np.asarray(model_version_read(model_version=base), dtype=np.float32)
    shards = partition_shards(
        dataset=config.dataset,
        partition=config.partition,
        clients=config.partition_clients,
        seed=job.seed,
        alpha=config.dirichlet_alpha,
        per_client=config.shards_per_client or 2,
    )
    kernel = load_training_kernel(config.model_kernel)
    total = np.zeros(weights.shape[0], dtype=np.float64)
    samples = 0
    for participation in round_.participations.filter(included=True).order_by("pk"):
        invite = participation.invite
        x, y, _ = shards[invite["data"]["client_index"]]
        hyper = invite["hyperparameters"]
        update = client_train(
            kernel,
            sizes=tuple(config.model_sizes),
            weights=weights,
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
        total += update.samples * update.update.astype(np.float64)
        samples += update.samples
    return (weights.astype(np.float64) + (total / samples).astype(np.float32)).astype(np.float32)
