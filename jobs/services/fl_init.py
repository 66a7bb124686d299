"""Initial weights of the training kernels, deterministic in the job's seed. Pure numpy.

The layout is the kernels' own (docs/kernel-abi.md, "Parameter layout"): per dense layer W
[in × out] row-major then b [out]; the CNN's two convolutions first, then its dense head.
He-uniform weights, zero biases, drawn from ``numpy.random.default_rng(seed)``, so the same seed
gives the same bytes on every machine and version 0 of a job is reproducible from its config.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CNN_SIZES = (784, 10)
CNN_DENSE = (3136, 512, 10)
CNN_CONV_PARAMETERS = 25 * 32 + 32 + 800 * 64 + 64


def dense_parameter_count(sizes: Sequence[int]) -> int:
    """Parameters of a dense stack with biases: Σ a·b + b over consecutive sizes."""
    return sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))


def parameter_count(kernel: str, sizes: Sequence[int]) -> int:
    """Parameters of ``kernel`` ("logreg", "mlp" or "cnn") with architecture ``sizes``."""
    if kernel == "cnn":
        return CNN_CONV_PARAMETERS + dense_parameter_count(CNN_DENSE)
    return dense_parameter_count(sizes)


def init_dense(sizes: Sequence[int], seed: int) -> np.ndarray:
    """He-uniform weights and zero biases of a dense stack, one float32 vector of shape (d,)."""
    rng = np.random.default_rng(seed)
    parts = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        limit = np.sqrt(6.0 / a)
        parts += [rng.uniform(-limit, limit, a * b), np.zeros(b)]
    return np.concatenate(parts).astype(np.float32)


def init_cnn(seed: int) -> np.ndarray:
    """He-uniform weights of the CNN (zero biases), float32 of shape (1,663,370,)."""
    rng = np.random.default_rng(seed)
    w1 = rng.uniform(-np.sqrt(6 / 25), np.sqrt(6 / 25), 800)
    w2 = rng.uniform(-np.sqrt(6 / 800), np.sqrt(6 / 800), 51200)
    conv = np.concatenate([w1, np.zeros(32), w2, np.zeros(64)]).astype(np.float32)
    return np.concatenate([conv, init_dense(CNN_DENSE, seed + 1)])


def initial_weights(kernel: str, sizes: Sequence[int], seed: int) -> np.ndarray:
    """The initial global model of a job: float32, shape (parameter_count(kernel, sizes),)."""
    if kernel == "cnn":
        return init_cnn(seed)
    return init_dense(sizes, seed)
