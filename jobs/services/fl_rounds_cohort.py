"""Who a round invites and what the invite says: cohort eligibility, the data shards of a public
partition, and the ``worker.round_invite`` event (its shape is documented in ``protocol.md``)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from django.db.models import Q

from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import DataSource, FlConfig, Participation, Round, ServerStrategy
from jobs.models import Job, Worker
from jobs.services.fl_rounds_compression import (
    compression_invite_terms,
    is_compressed,
    payload_bytes,
)
from jobs.services.fl_rounds_dp import dp_invite_terms
from jobs.services.fl_rounds_eligibility import is_accounted, protected_pool

UPDATE_HEADER_BYTES = 32  # the training kernel's v2 metrics header, before f32[d]
MAX_CHUNK_BYTES = 256 * 1024
DEFAULT_CHUNK_BYTES = 256 * 1024
INVITE_EVENT = "worker.round_invite"


@dataclass(frozen=True, slots=True)
class RoundInvitation:
    """One invited worker: where to send the invite and what it says."""

    worker_id: str
    channel_name: str
    participation_id: int
    payload: dict[str, Any]


def update_vectors(*, config: FlConfig) -> int:
    """How many f32[d] vectors an upload carries after its header: SCAFFOLD clients send their
    update and their control-variate delta [Δy ‖ Δc]; every other strategy the update alone."""
    return 2 if config.server_strategy == ServerStrategy.SCAFFOLD else 1


def update_total_bytes(*, config: FlConfig) -> int:
    """Exact size of one upload: the metrics header, then f32[d] (SCAFFOLD: two of them), or
    the job's compressed payload."""
    if is_compressed(config):
        return UPDATE_HEADER_BYTES + payload_bytes(config)
    return UPDATE_HEADER_BYTES + 4 * config.parameter_count * update_vectors(config=config)


def eligible_workers(
    *, job: Job, config: FlConfig, rng: random.Random | None = None
) -> list[Worker]:
    """Online, unbanned workers that may serve this job (private pools as for FC), one per
    contributor, in a stable order: edge workers and browser pages alike (both train); for a
    job with secure aggregation or DP, anonymous contributors only as many as the
    protected-cohort rule admits (drawn with ``rng``)."""
    pool = Q(contributor__pool_tenant_id=job.tenant_id)
    if not job.private_pool:
        pool |= Q(contributor__pool_tenant__isnull=True)
    # The kernels need SIMD128 and room for weights, update and momentum (about 4 copies).
    needed_mb = (16 * config.parameter_count) // (1024 * 1024)
    workers = (
        Worker.objects.filter(pool, is_online=True, is_banned=False, contributor__is_banned=False)
        .exclude(capabilities__simd=False)
        .select_related("contributor__user")
        .order_by("contributor_id", "id")
    )
    chosen: dict[Any, Worker] = {}
    for worker in workers:
        memory = (worker.capabilities or {}).get("memory_mb")
        if isinstance(memory, int | float) and memory < needed_mb:
            continue
        chosen.setdefault(worker.contributor_id, worker)
    return protected_pool(job=job, config=config, workers=list(chosen.values()), rng=rng)


def anonymous_count(cohort: list[Worker], *, job: Job) -> int:
    """How many of a cohort's workers belong to anonymous contributors."""
    return sum(1 for worker in cohort if not is_accounted(worker.contributor, job=job))


def _hyperparameters(config: FlConfig) -> dict[str, Any]:
    return {
        "local_epochs": config.local_epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "client_optimizer": config.client_optimizer,
        "momentum": config.momentum,
        "proximal_mu": config.proximal_mu,
        "compression": config.compression,
    }


def data_shards(config: FlConfig, count: int, rng: random.Random) -> list[int | None]:
    """The public partition's client index each invitee trains on (None for local data)."""
    if config.data_source != DataSource.PUBLIC_PARTITION or not config.partition_clients:
        return [None] * count
    clients = config.partition_clients
    drawn = rng.sample(range(clients), min(count, clients))
    return [drawn[i % len(drawn)] for i in range(count)]


def invite_data(*, job: Job, shard: int | None) -> dict[str, Any]:
    """The invite's ``data``: where the invitee's rows come from (its public shard, or its own
    local data) and whether they are private."""
    config = job.fl_config
    data: dict[str, Any] = {"source": config.data_source, "private": config.data_is_private}
    if config.data_source == DataSource.PUBLIC_PARTITION:
        data |= {
            "dataset": config.dataset,
            "partition": config.partition,
            "clients": config.partition_clients,
            "dirichlet_alpha": config.dirichlet_alpha,
            "shards_per_client": config.shards_per_client,
            "client_index": shard,
            "seed": job.seed,
        }
    elif config.data_source == DataSource.CONTRIBUTOR_LOCAL and config.local_data:
        # What the contributor's own file must look like, and how many rows to train on at most
        # (an analytics job's columns are in its query instead).
        data |= {"schema": dict(config.local_data), "max_samples": config.max_local_samples}
    return data


def round_invite_payload(
    *,
    job: Job,
    round: Round,  # noqa: A002
    participation: Participation,
    version: ModelVersion,
    shard: int | None,
    controls: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The channel event a worker's consumer turns into the ``round_invite`` message.

    ``controls`` (SCAFFOLD only) names the server's control variate c and, when the server
    holds one for this partition client, the client's own cᵢ, both served by hash."""
    config = job.fl_config
    data = invite_data(job=job, shard=shard)
    seed = (job.seed + round.number * 1_000_003 + participation.pk) % (1 << 63)
    return {
        "type": INVITE_EVENT,
        "job": str(job.pk),
        "round": round.number,
        "participation": participation.pk,
        "deadline": round.deadline.isoformat(),
        "seed": seed,
        "model": {
            "version": version.version,
            "sha256": version.sha256,
            "url": f"/weights/{version.sha256}.f32",
            "kernel": config.model_kernel,
            "sizes": config.model_sizes,
            "parameter_count": config.parameter_count,
        }
        | (controls or {}),
        "hyperparameters": _hyperparameters(config) | dp_invite_terms(round=round),
        "data": data,
        "upload": {
            "url": "/fl/uploads/",
            "chunk_bytes": DEFAULT_CHUNK_BYTES,
            "total_bytes": update_total_bytes(config=config),
        },
    } | compression_invite_terms(config=config, seed=seed)
