"""SCAFFOLD in rounds: the control variates the server keeps and serves (Karimireddy et al. 2020).

The server's control variate c lives in the strategy state next to each model version
(``ScaffoldServer``). For a public partition the server also keeps each partition client's cᵢ
(a worker trains whichever client index it is invited to, so cᵢ belongs to the data, not to the
worker), as content-addressed f32[d] blobs with a JSON index per model version (client index →
sha256). Both are served to workers by hash, same origin (``/fl/controls/<job>/<sha256>.f32``).

Clients train with the correction c − cᵢ (the kernel's control input), then upload [Δy ‖ Δc]
with Δc = cᵢ⁺ − cᵢ = −c − Δy / (K·η) (option II, K local steps). At close the server folds both
with equal weights: x' = x + η_g · mean Δy, c' = c + (|S|/N) · mean Δc, and cᵢ ← cᵢ + Δcᵢ for each
included client. With contributors' own data cᵢ is never sent (zeros): the client keeps none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from django.core.files.storage import default_storage

from jobs.aggregation import ScaffoldServer
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import FlConfig, Participation, ServerStrategy
from jobs.models import Job
from jobs.services.fl_data import has_public_partition
from jobs.services.fl_rounds_storage import storage_put


def control_key(*, job: Job, sha256: str) -> str:
    """Storage key of a control-variate blob (content-addressed within the job)."""
    return f"fl-controls/{job.tenant_id}/{job.pk}/{sha256}.f32"


def _clients_key(job: Job, version: int) -> str:
    return f"fl-controls/{job.tenant_id}/{job.pk}/clients-{version:06d}.json"


def control_put(*, job: Job, values: np.ndarray) -> str:
    """Store f32[d] under its hash (once) and return the sha256."""
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    sha256 = hashlib.sha256(data).hexdigest()
    key = control_key(job=job, sha256=sha256)
    if not default_storage.exists(key):
        storage_put(key, data)
    return sha256


def control_read(*, job: Job, sha256: str) -> np.ndarray:
    """A stored control-variate blob as f32[d], checked against its hash."""
    with default_storage.open(control_key(job=job, sha256=sha256), "rb") as handle:
        data = handle.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"control variate {sha256} does not match its hash")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def client_controls(*, job: Job, version: int) -> dict[str, str]:
    """The partition clients' cᵢ as of ``version``: client index (str) → sha256."""
    key = _clients_key(job, version)
    if not default_storage.exists(key):
        return {}
    with default_storage.open(key, "rb") as handle:
        return dict(json.loads(handle.read()))


def _url(job: Job, sha256: str) -> dict[str, str]:
    return {"sha256": sha256, "url": f"/fl/controls/{job.pk}/{sha256}.f32"}


def scaffold_invite_controls(
    *, job: Job, base: ModelVersion, read_state: Callable[[], bytes | None]
) -> Callable[[int | None], dict[str, Any] | None]:
    """What each invite of a round from ``base`` adds to its ``model``.

    SCAFFOLD: ``control`` (c, from the strategy state stored with ``base``; zeros before the
    first round) and, when the server holds one for the invitee's partition client,
    ``client_control`` (cᵢ). Any other strategy: nothing (its state is never read)."""
    config = job.fl_config
    if config.server_strategy != ServerStrategy.SCAFFOLD:
        return lambda shard: None
    server = ScaffoldServer(total_clients=1)
    state = read_state()
    if state is not None:
        server.load_state(state)
    control = _url(job, control_put(job=job, values=server.control_f32(config.parameter_count)))
    held = client_controls(job=job, version=base.version)

    def controls(shard: int | None) -> dict[str, Any]:
        found = held.get(str(shard)) if shard is not None else None
        return {"control": control} | ({"client_control": _url(job, found)} if found else {})

    return controls


def scaffold_total_clients(*, config: FlConfig, cohort_size: int) -> int:
    """N in c' = c + (|S|/N)·mean Δc: the partition's clients, or the invited cohort when the
    population is unknown (contributors' own data)."""
    if has_public_partition(config):
        return int(config.partition_clients)
    return max(1, cohort_size)


def client_controls_update(
    *,
    job: Job,
    base: ModelVersion,
    version: int,
    deltas: list[tuple[Participation, np.ndarray]],
) -> None:
    """cᵢ ← cᵢ + Δcᵢ for each included client of a public partition; the index of ``version``
    is written (the previous version's index stays for rounds still training from it)."""
    if not has_public_partition(job.fl_config):
        return
    index = client_controls(job=job, version=base.version)
    for participation, delta in deltas:
        shard = (participation.invite.get("data") or {}).get("client_index")
        if not isinstance(shard, int):
            continue
        held = index.get(str(shard))
        current = (
            control_read(job=job, sha256=held)
            if held
            else np.zeros(delta.shape[0], dtype=np.float32)
        )
        index[str(shard)] = control_put(
            job=job, values=(current.astype(np.float64) + delta).astype(np.float32)
        )
    storage_put(_clients_key(job, version), json.dumps(index, sort_keys=True).encode())
