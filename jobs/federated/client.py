"""The client side of one FL round: global weights + hyperparameters + local data → update.

``client_train`` is what the edge worker calls (and what the simulator calls for each simulated
client): it encodes ABI v2 calls, runs ``KernelRunner.train()`` once per local epoch and returns
the update relative to the global weights with the client's metrics. ``evaluate`` runs the
kernel's eval op. ``load_training_kernel`` opens a built kernel pinned to its manifest digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ccgsc_worker import abi
from ccgsc_worker.kernel import KernelRunner

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUILD_DIR = REPOSITORY_ROOT / "wasm" / "build"
EVAL_BATCH = 1000  # the eval op's batch size changes only memory, never the result
_GOLDEN = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1


class ClientTrainingFailed(Exception):
    """The kernel reported a non-finite result or input: the update cannot be used."""

    def __init__(self, status: int) -> None:
        super().__init__(abi.STATUS_TEXT.get(status, f"status {status}"))
        self.status = status


@dataclass(frozen=True)
class TrainingKernel:
    """A built training kernel: its manifest entry and a wasmtime runner pinned to its digest."""

    name: str
    sha256: str
    entry: dict
    runner: KernelRunner

    def n_params(self, sizes: tuple[int, ...]) -> int:
        """The parameter count of this kernel for an architecture."""
        if self.entry["architecture"]["type"] == "cnn":
            if tuple(sizes) != abi.CNN_SIZES:
                raise ValueError(f"the cnn kernel takes sizes {abi.CNN_SIZES}")
            return abi.CNN_PARAM_COUNT
        return abi.dense_param_count(sizes)


def load_training_kernel(name: str, build_dir: Path | None = None) -> TrainingKernel:
    """Open ``name`` (logreg, mlp, cnn) from the build manifest, with its declared limits."""
    directory = build_dir or DEFAULT_BUILD_DIR
    manifest = json.loads((directory / "manifest.json").read_text())
    entry = next((k for k in manifest.get("training_kernels", []) if k["name"] == name), None)
    if entry is None:
        raise LookupError(f"no training kernel {name!r} in {directory / 'manifest.json'}")
    runner = KernelRunner(
        (directory / entry["file"]).read_bytes(),
        entry["sha256"],
        limits=abi.limits_for("train", entry["limits"]),
    )
    return TrainingKernel(name=name, sha256=entry["sha256"], entry=entry, runner=runner)


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyperparameters; ``batch_size=None`` is one full-batch step (B = ∞)."""

    epochs: int = 1
    batch_size: int | None = 10
    learning_rate: float = 0.05
    momentum: float = 0.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be at least 1 (None for full batch)")
        if not self.learning_rate > 0.0:
            raise ValueError("learning_rate must be positive")


@dataclass(frozen=True)
class ClientUpdate:
    """One client's result: ``update`` = local weights − global weights (f32[d]).

    ``samples`` is the local data set size (the FedAvg weight); loss and accuracy are those of
    the last local epoch, computed per minibatch before each step.
    """

    update: np.ndarray
    samples: int
    steps: int
    mean_loss: float
    accuracy: float
    update_l2: float


def derive_seed(seed: int, *parts: int) -> int:
    """A u64 seed for a sub-stream (client, round, epoch), by SplitMix64 steps of ``seed``."""
    state = seed & _U64
    for part in parts:
        state = (state + _GOLDEN + (part & _U64)) & _U64
        state = _mix64(state)
    return state


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def client_train(
    kernel: TrainingKernel,
    *,
    sizes: tuple[int, ...],
    weights: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    seed: int,
) -> ClientUpdate:
    """Train E local epochs from ``weights`` (f32[d]) on X (f32 or u8 [n, sizes[0]]) and Y.

    One kernel call per epoch, each with its own shuffle seed ``derive_seed(seed, epoch)``;
    momentum carries over between epochs. FedProx's anchor is the weights the call starts
    from, so with μ > 0 and E > 1 each epoch is pulled towards its own start (the kernel ABI
    has one w₀); the platform's default is E = 1. Raises ``ClientTrainingFailed`` on a
    non-finite result.
    """
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("a client needs at least one sample")
    d = kernel.n_params(sizes)
    start = np.ascontiguousarray(weights, dtype=np.float32)
    current = start
    batch = n if config.batch_size is None else min(config.batch_size, n)
    labels = np.ascontiguousarray(y, dtype=np.uint32)
    features = np.ascontiguousarray(x)
    momentum_buffer: bytes | None = None
    carry_momentum = config.momentum > 0.0 and config.epochs > 1
    result: abi.TrainResult | None = None
    for epoch in range(config.epochs):
        data = abi.encode_train_input(
            op="train",
            sizes=sizes,
            weights=current,
            x=features,
            y=labels,
            batch_size=batch,
            seed=derive_seed(seed, epoch),
            learning_rate=config.learning_rate,
            momentum=config.momentum,
            prox_mu=config.proximal_mu,
            momentum_buffer=momentum_buffer,
            return_momentum=carry_momentum,
            n_params=d,
        )
        result = kernel.runner.train(data)
        if not result.ok or result.update is None:
            raise ClientTrainingFailed(result.status)
        step = np.frombuffer(result.update, dtype="<f4")
        current = (current + step).astype(np.float32) if config.epochs > 1 else start + step
        momentum_buffer = result.momentum
    assert result is not None  # noqa: S101 - epochs >= 1 is checked by TrainConfig
    if config.epochs == 1:
        update = np.frombuffer(result.update or b"", dtype="<f4").astype(np.float32)
    else:
        update = (current - start).astype(np.float32)
    return ClientUpdate(
        update=update,
        samples=n,
        steps=config.epochs * -(-n // batch),
        mean_loss=result.mean_loss,
        accuracy=result.accuracy,
        update_l2=float(np.linalg.norm(update.astype(np.float64))),
    )


@dataclass(frozen=True)
class Evaluation:
    """Mean loss and accuracy of a model on a labelled set (``samples`` of them)."""

    samples: int
    mean_loss: float
    accuracy: float


def evaluate(
    kernel: TrainingKernel,
    *,
    sizes: tuple[int, ...],
    weights: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    chunk: int = EVAL_BATCH,
) -> Evaluation:
    """The kernel's eval op over (X, Y) in chunks of ``chunk`` samples (memory only)."""
    n = int(y.shape[0])
    d = kernel.n_params(sizes)
    loss_sum, correct = 0.0, 0
    weights32 = np.ascontiguousarray(weights, dtype=np.float32)
    for lo in range(0, n, chunk):
        data = abi.encode_train_input(
            op="eval",
            sizes=sizes,
            weights=weights32,
            x=np.ascontiguousarray(x[lo : lo + chunk]),
            y=np.ascontiguousarray(y[lo : lo + chunk], dtype=np.uint32),
            batch_size=chunk,
            n_params=d,
        )
        result = kernel.runner.train(data)
        if not result.ok:
            raise ClientTrainingFailed(result.status)
        loss_sum += result.loss_sum
        correct += result.correct
    return Evaluation(
        samples=n, mean_loss=loss_sum / n if n else 0.0, accuracy=correct / n if n else 0.0
    )


def initial_weights(
    architecture: Literal["dense", "cnn"], sizes: tuple[int, ...], *, seed: int
) -> np.ndarray:
    """He-uniform weights, zero biases, in the kernel's layout: f32[d]."""
    rng = np.random.default_rng([seed, 0xC0DE])
    if architecture == "cnn":
        conv1 = rng.uniform(-np.sqrt(6 / 25), np.sqrt(6 / 25), 25 * 32)
        conv2 = rng.uniform(-np.sqrt(6 / 800), np.sqrt(6 / 800), 800 * 64)
        parts = [conv1, np.zeros(32), conv2, np.zeros(64)]
        dense_sizes: tuple[int, ...] = (3136, 512, 10)
    else:
        parts, dense_sizes = [], sizes
    for fan_in, fan_out in zip(dense_sizes, dense_sizes[1:], strict=False):
        limit = np.sqrt(6.0 / fan_in)
        parts += [rng.uniform(-limit, limit, fan_in * fan_out), np.zeros(fan_out)]
    return np.concatenate(parts).astype(np.float32)
