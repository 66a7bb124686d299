"""Server strategies that need more than the round's streaming mean, run at close (in Celery,
under the round's row lock): the robust rules over a memmapped spill of the round's updates,
q-FFL with each client's own loss, and SCAFFOLD's two means and control variates.

Every accepted update is already in storage (its chunks stay until the round ends) and in the
round's fold (validated, counted, idempotent), so the fold path is the same for every strategy.
At close the robust rules copy the included updates from storage into an (n, d) float32 memmap
in a temporary directory (``UpdateSpill``) and reduce it a block of coordinates at a time:
memory O(n · block), disk 4·n·d bytes for the length of the close. A crash mid-close loses
only the temporary spill; the retry rebuilds it from storage.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.aggregation import (
    FedAvg,
    QFedAvgFold,
    ScaffoldServer,
    StreamingFold,
    UpdateSpill,
    coordinate_median,
    multi_krum,
    norm_bounded_mean,
    trimmed_mean,
)
from jobs.fl_artifact_models import ModelVersion
from jobs.fl_models import Compression, FlConfig, Participation, Round, ServerStrategy
from jobs.models import Job
from jobs.services.fl_rounds_compression import dense_chunks, dense_update, sign_step
from jobs.services.fl_rounds_scaffold import client_controls_update, scaffold_total_clients
from jobs.services.fl_rounds_uploads import update_chunks


@dataclass(frozen=True, slots=True)
class CloseStep:
    """The next global weights f32[d] and the strategy state to store beside them."""

    weights: np.ndarray
    state: bytes
    spilled_bytes: int = 0


def _update_array(participation: Participation, config: FlConfig) -> np.ndarray:
    """An included participation's stored update after its header, as f32 (d or 2d; a
    compressed one decoded)."""
    return dense_update(
        config=config, open_chunks=lambda: update_chunks(upload=participation.upload)
    )


def robust_aggregate(
    *, config: FlConfig, included: list[Participation], dimension: int, spill_dir: Path
) -> tuple[np.ndarray, int]:
    """The round's robust aggregate f32[d] of the included updates (weights: their sample
    counts), over a spill in ``spill_dir``; returns it with the spill's size in bytes."""
    options = dict(config.strategy_options or {})
    spill = UpdateSpill(spill_dir / "updates.npy", dimension=dimension, capacity=len(included))
    for participation in included:
        spill.append_chunks(
            str(participation.pk),
            dense_chunks(
                config=config,
                open_chunks=lambda p=participation: update_chunks(upload=p.upload),
            ),
            float(participation.samples),
        )
    spill.flush()
    updates = spill.updates
    weights = np.asarray(spill.weights, dtype=np.float64)
    strategy = config.server_strategy
    if strategy == ServerStrategy.MEDIAN:
        aggregate = coordinate_median(updates)
    elif strategy == ServerStrategy.TRIMMED_MEAN:
        aggregate = trimmed_mean(updates, beta=float(options.get("beta", 0.1)))
    elif strategy in (ServerStrategy.KRUM, ServerStrategy.MULTI_KRUM):
        byzantine = int(options.get("byzantine", 1))
        selected = 1 if strategy == ServerStrategy.KRUM else int(options.get("selected", 1))
        aggregate = multi_krum(
            updates,
            byzantine=byzantine,
            selected=min(selected, len(included)),
            weights=weights,
        )
    else:
        aggregate = norm_bounded_mean(
            updates, bound=float(options.get("bound", 5.0)), weights=weights
        )
    return aggregate, 4 * len(included) * dimension


def _qffl(config: FlConfig, weights: np.ndarray, included: list[Participation]) -> np.ndarray:
    fold = QFedAvgFold(
        weights,
        q=float((config.strategy_options or {}).get("q", 0.1)),
        client_learning_rate=config.learning_rate,
    )
    for participation in included:
        loss = participation.loss_sum / participation.samples  # the client's mean train loss
        fold.fold(str(participation.pk), _update_array(participation, config), loss)
    return fold.finish()


def _scaffold(
    *,
    job: Job,
    round_: Round,
    config: FlConfig,
    base: ModelVersion,
    weights: np.ndarray,
    fold: StreamingFold,
    included: list[Participation],
    state: bytes | None,
) -> CloseStep:
    d = config.parameter_count
    server = ScaffoldServer(
        total_clients=scaffold_total_clients(config=config, cohort_size=round_.cohort_size),
        global_learning_rate=float(
            (config.strategy_options or {}).get("global_learning_rate", 1.0)
        ),
    )
    if state is not None:
        server.load_state(state)
        server.total_clients = scaffold_total_clients(config=config, cohort_size=round_.cohort_size)
    mean = fold.finish()  # the equal-weight mean of [Δy ‖ Δc]
    participants = min(len(included), server.total_clients)
    new_weights = server.step(
        weights=weights,
        mean_delta=mean[:d],
        mean_control_delta=mean[d:].astype(np.float64),
        participants=participants,
    )
    deltas = [
        (participation, _update_array(participation, config)[d:]) for participation in included
    ]
    client_controls_update(job=job, base=base, version=base.version + 1, deltas=deltas)
    return CloseStep(new_weights, server.state_bytes())


def close_step(
    *,
    job: Job,
    round_: Round,
    config: FlConfig,
    base: ModelVersion,
    weights: np.ndarray,
    fold: StreamingFold,
    included: list[Participation],
    state: bytes | None,
) -> CloseStep:
    """The next weights of a round whose strategy is in ``CLOSE_TIME_STRATEGIES``.

    ``included`` are the folded participations in id order (their uploads still in storage);
    ``state`` is the strategy state stored with ``base`` (None before the first round).
    """
    strategy = config.server_strategy
    if config.compression == Compression.SIGNSGD:  # the fold is a majority vote
        return CloseStep(
            sign_step(weights=weights, vote=fold, config=config), FedAvg().state_bytes()
        )
    if strategy == ServerStrategy.SCAFFOLD:
        return _scaffold(
            job=job,
            round_=round_,
            config=config,
            base=base,
            weights=weights,
            fold=fold,
            included=included,
            state=state,
        )
    if strategy == ServerStrategy.QFFL:
        return CloseStep(_qffl(config, weights, included), FedAvg().state_bytes())
    with tempfile.TemporaryDirectory(prefix="ccgsc-spill-") as directory:
        aggregate, spilled = robust_aggregate(
            config=config,
            included=included,
            dimension=config.parameter_count,
            spill_dir=Path(directory),
        )
    # The robust aggregate replaces the mean; the server step is FedAvg's (w + aggregate).
    return CloseStep(
        FedAvg().step(weights=weights, mean_delta=aggregate), FedAvg().state_bytes(), spilled
    )
