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


CNN_SIZES = (784, 10)
CNN_PARAMS = 1_663_370
CNN_DENSE = (3136, 512, 10)
_CNN_SHAPES = [(25, 32), (32,), (800, 64), (64,)]


def init_cnn(seed: int = 0) -> np.ndarray:
    """He-uniform CNN weights (zero biases) as one float32 vector in the kernel's layout."""
    rng = np.random.default_rng(seed)
    w1 = rng.uniform(-np.sqrt(6 / 25), np.sqrt(6 / 25), 800)
    w2 = rng.uniform(-np.sqrt(6 / 800), np.sqrt(6 / 800), 51200)
    conv = np.concatenate([w1, np.zeros(32), w2, np.zeros(64)]).astype(np.float32)
    return np.concatenate([conv, init_dense(CNN_DENSE, seed + 1)])


def _im2col(a: np.ndarray) -> np.ndarray:
    """[bs, side, side, ch] -> [bs, side*side, 25*ch], column (ky*5+kx)*ch + c, 'same' zeros."""
    bs, side, _, ch = a.shape
    padded = np.zeros((bs, side + 4, side + 4, ch), dtype=a.dtype)
    padded[:, 2:-2, 2:-2] = a
    cols = [padded[:, ky : ky + side, kx : kx + side, :] for ky in range(5) for kx in range(5)]
    return np.stack(cols, axis=3).reshape(bs, side * side, 25 * ch)


def _col2im(col: np.ndarray, side: int, ch: int) -> np.ndarray:
    bs = col.shape[0]
    col = col.reshape(bs, side, side, 25, ch)
    padded = np.zeros((bs, side + 4, side + 4, ch), dtype=col.dtype)
    for ky in range(5):
        for kx in range(5):
            padded[:, ky : ky + side, kx : kx + side, :] += col[:, :, :, ky * 5 + kx, :]
    return padded[:, 2:-2, 2:-2]


def _pool(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2 max pool of [bs, side, side, ch]; the winner is the first maximum (row-major)."""
    bs, side, _, ch = a.shape
    windows = a.reshape(bs, side // 2, 2, side // 2, 2, ch).transpose(0, 1, 3, 5, 2, 4)
    windows = windows.reshape(bs, side // 2, side // 2, ch, 4)
    arg = windows.argmax(axis=-1)
    return np.take_along_axis(windows, arg[..., None], -1)[..., 0], arg


def _unpool(d: np.ndarray, arg: np.ndarray) -> np.ndarray:
    bs, half, _, ch = d.shape
    out = np.zeros((bs, half, half, ch, 4), dtype=d.dtype)
    np.put_along_axis(out, arg[..., None], d[..., None], -1)
    out = out.reshape(bs, half, half, ch, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return out.reshape(bs, 2 * half, 2 * half, ch)


def cnn_batch(
    w: np.ndarray, x: np.ndarray, y: np.ndarray, want_grad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The CNN kernel's minibatch: losses, hits and the mean gradient (flat, float32)."""
    bs = len(y)
    offs = np.cumsum([0] + [int(np.prod(s)) for s in _CNN_SHAPES])
    w1, b1, w2, b2 = (w[offs[i] : offs[i + 1]].reshape(s) for i, s in enumerate(_CNN_SHAPES))
    dense = w[offs[-1] :]
    img = x.reshape(bs, 28, 28, 1)
    col1 = _im2col(img)
    out1 = np.maximum(col1 @ w1 + b1, np.float32(0)).reshape(bs, 28, 28, 32)
    pool1, arg1 = _pool(out1)
    col2 = _im2col(pool1)
    out2 = np.maximum(col2 @ w2 + b2, np.float32(0)).reshape(bs, 14, 14, 64)
    pool2, arg2 = _pool(out2)
    flat = pool2.reshape(bs, 3136)
    layers = split_dense(dense, CNN_DENSE)
    h = np.maximum(flat @ layers[0][0] + layers[0][1], np.float32(0))
    logits = h @ layers[1][0] + layers[1][1]
    loss, hits, dz = softmax_xent(logits, y)
    if not want_grad:
        return loss, hits, None
    g4, gb4 = h.T @ dz, dz.sum(axis=0)
    dh = (dz @ layers[1][0].T) * (h > 0)
    g3, gb3 = flat.T @ dh, dh.sum(axis=0)
    dflat = dh @ layers[0][0].T
    dout2 = _unpool(dflat.reshape(bs, 7, 7, 64), arg2) * (out2 > 0)
    d2 = dout2.reshape(bs, 196, 64)
    g2 = np.einsum("bpk,bpc->kc", col2, d2)
    dpool1 = _col2im(d2 @ w2.T, 14, 32)
    dout1 = (_unpool(dpool1, arg1) * (out1 > 0)).reshape(bs, 784, 32)
    g1 = np.einsum("bpk,bpc->kc", col1, dout1)
    parts = [g1, dout1.sum(axis=(0, 1)), g2, d2.sum(axis=(0, 1))]
    parts += [g3, gb3, g4, gb4]
    return loss, hits, np.concatenate([p.ravel() for p in parts]).astype(np.float32)
