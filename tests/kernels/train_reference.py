"""A numpy reference of the ABI v2 training kernels: the same algorithm, in float32.

Same shuffle (SplitMix64 Fisher-Yates), same minibatches, same parameter layout, same update
rule; numpy's matrix products sum in a different order and np.exp/np.log are not the kernels'
own, so results agree to rounding, not bit for bit. Also used by bench/bench_training.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GAMMA = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def mix64(z: int) -> int:
    """The SplitMix64 finaliser."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def shuffle(n: int, seed: int) -> np.ndarray:
    """The kernels' permutation: Fisher-Yates, j = ((next >> 32) * (i + 1)) >> 32."""
    perm = list(range(n))
    state = seed
    for i in range(n - 1, 0, -1):
        state = (state + GAMMA) & MASK64
        j = ((mix64(state) >> 32) * (i + 1)) >> 32
        perm[i], perm[j] = perm[j], perm[i]
    return np.array(perm, dtype=np.int64)


def split_dense(w: np.ndarray, sizes: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Views (W [in x out], b [out]) per layer of a flat dense-stack parameter vector."""
    layers, off = [], 0
    for a, b in zip(sizes, sizes[1:], strict=False):
        weight = w[off : off + a * b].reshape(a, b)
        off += a * b
        layers.append((weight, w[off : off + b]))
        off += b
    return layers


def init_dense(sizes: Sequence[int], seed: int = 0) -> np.ndarray:
    """He-uniform weights and zero biases as one float32 vector."""
    rng = np.random.default_rng(seed)
    parts = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        limit = np.sqrt(6.0 / a)
        parts += [rng.uniform(-limit, limit, a * b), np.zeros(b)]
    return np.concatenate(parts).astype(np.float32)


def softmax_xent(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row losses, argmax hits and dz = (softmax - onehot) / rows, all float32."""
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = np.log(s[:, 0]) - (z[rows, y] - m[:, 0])
    dz = e / s
    dz[rows, y] -= np.float32(1.0)
    return loss, z.argmax(axis=1) == y, dz / np.float32(len(y))


def dense_batch(
    w: np.ndarray, sizes: Sequence[int], x: np.ndarray, y: np.ndarray, want_grad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Losses, hits and the mean gradient (flat, float32) of one minibatch."""
    layers = split_dense(w, sizes)
    acts = [x]
    for index, (weight, bias) in enumerate(layers):
        z = acts[-1] @ weight + bias
        acts.append(np.maximum(z, np.float32(0)) if index < len(layers) - 1 else z)
    loss, hits, dz = softmax_xent(acts[-1], y)
    if not want_grad:
        return loss, hits, None
    grads: list[np.ndarray] = []
    for index in range(len(layers) - 1, -1, -1):
        weight, _ = layers[index]
        grads[:0] = [(acts[index].T @ dz).ravel(), dz.sum(axis=0)]
        if index:
            dz = (dz @ weight.T) * (acts[index] > 0)
    return loss, hits, np.concatenate(grads).astype(np.float32)


@dataclass
class ReferenceResult:
    """What the kernel reports, from the reference."""

    samples: int
    loss_sum: float
    correct: int
    update: np.ndarray | None
    momentum: np.ndarray | None


def run_reference(
    *,
    op: str,
    batch_fn,
    weights: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int = 0,
    learning_rate: float = 0.0,
    momentum: float = 0.0,
    prox_mu: float = 0.0,
    control: np.ndarray | None = None,
    momentum_buffer: np.ndarray | None = None,
) -> ReferenceResult:
    """One epoch (op "train") or one evaluation pass of the kernels' algorithm."""
    f32 = np.float32
    x = x.astype(f32) / f32(255) if x.dtype == np.uint8 else x.astype(f32)
    n = len(y)
    order = shuffle(n, seed) if op == "train" else np.arange(n)
    w0 = weights.astype(f32)
    w = w0.copy()
    vel = np.zeros_like(w) if momentum_buffer is None else momentum_buffer.astype(f32).copy()
    lr, mom, mu = f32(learning_rate), f32(momentum), f32(prox_mu)
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        loss, hits, grad = batch_fn(w, x[idx], y[idx], op == "train")
        loss_sum += float(np.sum(loss.astype(np.float64)))
        correct += int(hits.sum())
        if op != "train":
            continue
        g = grad
        if mu != 0:
            g = g + mu * (w - w0)
        if control is not None:
            g = g + control
        if mom != 0:
            vel = mom * vel + g
            g = vel
        w = w - lr * g
    if op != "train":
        return ReferenceResult(n, loss_sum, correct, None, None)
    return ReferenceResult(n, loss_sum, correct, w - w0, vel)
