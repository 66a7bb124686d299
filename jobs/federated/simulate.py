"""Simulated federated learning on our real kernels, in simulated time.

N clients hold the parts of a ``Partition`` of a public data set; every local training call
runs the real training kernel in wasmtime (``client.client_train``), the server folds with
``jobs.aggregation`` and evaluates on the held-out set with the kernel's eval op. Client
latencies come from a ``LatencyModel`` (log-normal device speeds and per-task noise, random
dropouts), so rounds have stragglers and a simulated wall clock; nothing sleeps.

- ``sync``: each round invites a cohort (``planning.select_cohort``, optionally over-selected)
  and runs the ``planning.SyncRound`` state machine: the first ``target`` reports before the
  deadline are folded, later ones are stragglers, dropouts are discovered at the deadline.
- ``async``: ``concurrency`` clients train at once on whatever version they fetched; each
  finished update goes to ``fedbuff.BufferedAsyncServer`` (staleness-weighted, K per version),
  and a new client starts at once.

FedAvg is E epochs of B-minibatches per client; FedSGD is one full-batch gradient step
(E = 1, B = ∞). Deterministic for a seed: same config, same records, bit for bit.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from jobs.aggregation import FedAvg, StreamingFold
from jobs.federated.client import (
    ClientUpdate,
    TrainConfig,
    TrainingKernel,
    client_train,
    derive_seed,
    evaluate,
    initial_weights,
)
from jobs.federated.data import Dataset
from jobs.federated.fedbuff import BufferedAsyncServer, Outcome, StalenessPolicy
from jobs.federated.partitions import Partition
from jobs.federated.planning import (
    CohortPolicy,
    ParticipantState,
    ReportDecision,
    RoundStatus,
    SyncRound,
    WorkerInfo,
    select_cohort,
)


@dataclass(frozen=True)
class LatencyModel:
    """Seconds from invitation to upload: median · device factor · task noise, log-normal.

    Each client has a persistent speed factor exp(N(0, device_sigma²)) (slow phones stay
    slow); each task multiplies by exp(N(0, task_sigma²)). A task drops out (never reports)
    with probability ``dropout``.
    """

    median_seconds: float = 10.0
    device_sigma: float = 0.6
    task_sigma: float = 0.3
    dropout: float = 0.05

    def device_factors(self, clients: int, seed: int) -> np.ndarray:
        """The per-client speed factors: float64 [clients]."""
        return np.random.default_rng([seed, 0x1A7]).lognormal(0.0, self.device_sigma, clients)

    def task(self, factor: float, *, seed: int, client: int, serial: int) -> tuple[float, bool]:
        """(latency seconds, dropped out) of one task of a client."""
        rng = np.random.default_rng([seed, 0x7A5C, client, serial])
        noise = rng.lognormal(0.0, self.task_sigma)
        return self.median_seconds * factor * noise, bool(rng.random() < self.dropout)


@dataclass(frozen=True)
class SimulationConfig:
    """One simulated job. ``rounds`` bounds the global versions (sync rounds or async buffers)."""

    sizes: tuple[int, ...]
    algorithm: Literal["fedavg", "fedsgd"] = "fedavg"
    mode: Literal["sync", "async"] = "sync"
    rounds: int = 20
    clients_per_round: int = 10
    epochs: int = 1
    batch_size: int = 10
    learning_rate: float = 0.05
    seed: int = 0
    target_accuracy: float | None = None  # stop at the first version that reaches it
    eval_every: int = 1
    latency: LatencyModel = field(default_factory=LatencyModel)
    # sync
    over_selection: float = 1.0
    deadline_seconds: float = 60.0
    min_reports: int | None = None
    # async
    buffer_size: int = 10
    concurrency: int = 10
    staleness: StalenessPolicy = field(default_factory=StalenessPolicy)

    def __post_init__(self) -> None:
        if (
            self.mode == "sync"
            and self.latency.dropout > 0
            and not math.isfinite(self.deadline_seconds)
        ):
            raise ValueError("sync rounds with dropouts need a finite deadline_seconds")
        if self.rounds < 1 or self.clients_per_round < 1 or self.eval_every < 1:
            raise ValueError("rounds, clients_per_round and eval_every must be at least 1")

    def train_config(self) -> TrainConfig:
        """FedSGD is one full-batch step; FedAvg is E epochs of B-minibatches."""
        if self.algorithm == "fedsgd":
            return TrainConfig(epochs=1, batch_size=None, learning_rate=self.learning_rate)
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate
        )


@dataclass(frozen=True)
class RoundRecord:
    """The server's view after one global version (a sync round or an async buffer)."""

    version: int
    time_seconds: float
    accuracy: float | None
    loss: float | None
    train_loss: float
    reported: int
    dropped: int
    stragglers: int
    stale_dropped: int
    mean_staleness: float
    updates_total: int


@dataclass
class SimulationResult:
    """The records of every global version and the final weights (f32[d])."""

    config: SimulationConfig
    records: list[RoundRecord]
    weights: np.ndarray

    @property
    def final_accuracy(self) -> float | None:
        scored = [r.accuracy for r in self.records if r.accuracy is not None]
        return scored[-1] if scored else None

    def first_reaching(self, accuracy: float) -> RoundRecord | None:
        """The first version whose test accuracy is at least ``accuracy``."""
        return next(
            (r for r in self.records if r.accuracy is not None and r.accuracy >= accuracy), None
        )


class _Clients:
    """The simulated clients: their data, device speeds and task serial numbers."""

    def __init__(
        self, config: SimulationConfig, kernel: TrainingKernel, train: Dataset, part: Partition
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.x = [train.kernel_x()[idx] for idx in part.clients]
        self.y = [train.y[idx] for idx in part.clients]
        self.factors = config.latency.device_factors(len(part), config.seed)
        self.serials = [0] * len(part)
        self.train_config = config.train_config()

    def __len__(self) -> int:
        return len(self.x)

    def start(self, client: int) -> tuple[float, bool, int]:
        """A new task for ``client``: (latency, dropped out, serial)."""
        serial = self.serials[client]
        self.serials[client] += 1
        latency, dropped = self.config.latency.task(
            float(self.factors[client]), seed=self.config.seed, client=client, serial=serial
        )
        return latency, dropped, serial

    def train(self, client: int, serial: int, weights: np.ndarray) -> ClientUpdate:
        return client_train(
            self.kernel,
            sizes=self.config.sizes,
            weights=weights,
            x=self.x[client],
            y=self.y[client],
            config=self.train_config,
            seed=derive_seed(self.config.seed, client, serial),
        )


def simulate(
    config: SimulationConfig,
    *,
    kernel: TrainingKernel,
    train: Dataset,
    test: Dataset,
    partition: Partition,
    weights: np.ndarray | None = None,
    on_record: Callable[[RoundRecord], None] | None = None,
) -> SimulationResult:
    """Run the simulation; records one ``RoundRecord`` per global version."""
    start = (
        weights
        if weights is not None
        else initial_weights(
            "cnn" if kernel.entry["architecture"]["type"] == "cnn" else "dense",
            config.sizes,
            seed=config.seed,
        )
    )
    clients = _Clients(config, kernel, train, partition)
    test_x = test.kernel_x()

    def score(version: int, current: np.ndarray) -> tuple[float | None, float | None]:
        if version % config.eval_every and version != config.rounds:
            return None, None
        result = evaluate(kernel, sizes=config.sizes, weights=current, x=test_x, y=test.y)
        return result.accuracy, result.mean_loss

    run = _simulate_sync if config.mode == "sync" else _simulate_async
    records: list[RoundRecord] = []

    def record(entry: RoundRecord) -> bool:
        records.append(entry)
        if on_record is not None:
            on_record(entry)
        target = config.target_accuracy
        return target is not None and entry.accuracy is not None and entry.accuracy >= target

    final = run(config, clients, start, score, record)
    return SimulationResult(config=config, records=records, weights=final)


Score = Callable[[int, np.ndarray], tuple[float | None, float | None]]
Record = Callable[[RoundRecord], bool]


def _simulate_sync(
    config: SimulationConfig, clients: _Clients, weights: np.ndarray, score: Score, record: Record
) -> np.ndarray:
    workers = [WorkerInfo(str(k)) for k in range(len(clients))]
    policy = CohortPolicy(
        count=config.clients_per_round,
        over_selection=config.over_selection,
        min_reports=config.min_reports,
        deadline_seconds=config.deadline_seconds
        if math.isfinite(config.deadline_seconds)
        else 1e12,
    )
    strategy = FedAvg()
    now, updates_total = 0.0, 0
    for version in range(1, config.rounds + 1):
        cohort = select_cohort(workers, policy, seed=config.seed, round_number=version)
        state = SyncRound.open(
            cohort, round_number=version, now=now, deadline_seconds=policy.deadline_seconds
        )
        arrivals: list[tuple[float, int, int]] = []
        silent: list[str] = []
        for worker_id in cohort.invited:
            latency, dropped, serial = clients.start(int(worker_id))
            if dropped:
                silent.append(worker_id)
            else:
                arrivals.append((now + latency, int(worker_id), serial))
        arrivals.sort()
        fold = StreamingFold(weights.shape[0])
        losses: list[float] = []
        close_at = None
        for at, client, serial in arrivals:
            if at > state.deadline_at:
                break
            if state.report(str(client), now=at) == ReportDecision.ACCEPT:
                update = clients.train(client, serial, weights)
                fold.fold(str(client), update.update, update.samples)
                losses.append(update.mean_loss)
            if state.reported >= state.target:
                close_at = at
                break
        if close_at is None:
            everyone_answered = not silent and len(arrivals) == state.reported
            close_at = arrivals[-1][0] if everyone_answered and arrivals else state.deadline_at
        for worker_id in silent:
            state.drop(worker_id, reason="lease expired")
        if state.close(now=close_at) == RoundStatus.CLOSED:
            weights = strategy.step(weights=weights, mean_delta=fold.finish())
        now = close_at
        updates_total += state.reported
        accuracy, loss = score(version, weights)
        done = record(
            RoundRecord(
                version=version,
                time_seconds=now,
                accuracy=accuracy,
                loss=loss,
                train_loss=float(np.mean(losses)) if losses else math.nan,
                reported=state.reported,
                dropped=state.count(ParticipantState.DROPPED),
                stragglers=state.count(ParticipantState.STRAGGLER),
                stale_dropped=0,
                mean_staleness=0.0,
                updates_total=updates_total,
            )
        )
        if done:
            break
    return weights


def _simulate_async(
    config: SimulationConfig, clients: _Clients, weights: np.ndarray, score: Score, record: Record
) -> np.ndarray:
    server = BufferedAsyncServer(
        weights, buffer_size=config.buffer_size, staleness=config.staleness
    )
    rng = np.random.default_rng([config.seed, 0xA5])
    busy: set[int] = set()
    queue: list[tuple[float, int, int, int, int, np.ndarray]] = []
    sequence = 0

    def launch(now: float) -> None:
        nonlocal sequence
        idle = [k for k in range(len(clients)) if k not in busy]
        client = int(idle[rng.integers(len(idle))])
        latency, dropped, serial = clients.start(client)
        busy.add(client)
        finish = now + latency
        heapq.heappush(
            queue,
            (
                finish,
                sequence,
                client,
                serial,
                server.version if not dropped else -1,
                server.weights,
            ),
        )
        sequence += 1

    for _ in range(min(config.concurrency, len(clients))):
        launch(0.0)
    losses: list[float] = []
    staleness_sum, dropped, updates_total = 0, 0, 0
    while server.version < config.rounds:
        now, _, client, serial, base_version, base_weights = heapq.heappop(queue)
        busy.discard(client)
        if base_version < 0:
            dropped += 1
        else:
            update = clients.train(client, serial, base_weights)
            decision = server.submit(
                f"{client}:{serial}",
                update.update,
                examples=update.samples,
                base_version=base_version,
            )
            if decision.outcome == Outcome.FOLDED:
                losses.append(update.mean_loss)
                staleness_sum += decision.staleness
                updates_total += 1
            if decision.new_version is not None:
                accuracy, loss = score(decision.new_version, server.weights)
                done = record(
                    RoundRecord(
                        version=decision.new_version,
                        time_seconds=now,
                        accuracy=accuracy,
                        loss=loss,
                        train_loss=float(np.mean(losses)),
                        reported=len(losses),
                        dropped=dropped,
                        stragglers=0,
                        stale_dropped=server.stale_dropped,
                        mean_staleness=staleness_sum / len(losses),
                        updates_total=updates_total,
                    )
                )
                losses, staleness_sum, dropped = [], 0, 0
                if done:
                    break
        launch(now)
    return server.weights
