"""ABI v2 training kernels (logreg, mlp, cnn) in wasmtime: against the numpy reference, finite
differences, real digits, non-finite inputs and the limits.

Tolerances: the kernels and the reference run the same algorithm in float32 but numpy sums
matrix products in another order and uses its own exp/log, so after an epoch the updates agree
to about 1e-6 absolute (asserted: 2e-5 + 1e-4 relative) and the loss sums to 1e-5 relative.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from ccgsc_worker import abi
from ccgsc_worker.kernel import KernelFailed, KernelRunner
from tests.kernels import train_reference as ref

MLP_SIZES = [20, 16, 8, 3]


def dense_fn(sizes):
    """The reference minibatch function of a dense stack."""
    return lambda w, x, y, grad: ref.dense_batch(w, sizes, x, y, grad)


def problem(n: int, features: int, classes: int, seed: int, u8: bool = False):
    """Random samples and labels."""
    rng = np.random.default_rng(seed)
    x = (
        rng.integers(0, 256, (n, features), dtype=np.uint8)
        if u8
        else rng.normal(size=(n, features))
    )
    return (x if u8 else x.astype(np.float32)), rng.integers(0, classes, n)


def train(runner: KernelRunner, sizes, **kw) -> abi.TrainResult:
    """Encode, run and decode one v2 call."""
    return runner.train(abi.encode_train_input(sizes=sizes, **kw))


def assert_matches(result: abi.TrainResult, expected: ref.ReferenceResult) -> None:
    """Kernel and reference agree to float32 rounding."""
    assert result.ok
    assert result.samples == expected.samples
    assert result.correct == expected.correct
    assert result.loss_sum == pytest.approx(expected.loss_sum, rel=1e-5)
    if expected.update is not None:
        update = np.frombuffer(result.update, np.float32)
        np.testing.assert_allclose(update, expected.update, rtol=1e-4, atol=2e-5)
        assert result.update_l2 == pytest.approx(np.linalg.norm(update.astype(np.float64)))


# ---- layout ---------------------------------------------------------------------------------


def test_v2_input_layout() -> None:
    """Header fields at their offsets; sections 16-byte aligned in the documented order."""
    w = np.arange(abi.dense_param_count([3, 2]), dtype=np.float32)
    x = np.arange(15, dtype=np.uint8).reshape(5, 3)
    data = abi.encode_train_input(
        op="train",
        sizes=[3, 2],
        weights=w,
        x=x,
        y=[0, 1, 0, 1, 1],
        batch_size=2,
        seed=7,
        learning_rate=0.5,
        momentum=0.25,
        prox_mu=0.125,
        control=w,
        return_momentum=True,
    )
    assert struct.unpack_from("<4I", data) == (2, abi.OP_TRAIN, 2 | 8 | abi.FLAG_X_U8, 2)
    assert struct.unpack_from("<8I", data, 16) == (3, 2, 0, 0, 0, 0, 0, 0)
    assert struct.unpack_from("<4IQ3f", data, 48) == (5, 2, 8, 0, 7, 0.5, 0.25, 0.125)
    assert data[84:96] == bytes(12)
    assert data[96:128] == w.tobytes()
    assert data[128:160] == w.tobytes()
    assert data[160:175] == x.tobytes()
    assert data[175:176] == b"\0"
    assert data[176:196] == struct.pack("<5I", 0, 1, 0, 1, 1)
    assert len(data) == 208


def test_decode_rejects_malformed_outputs() -> None:
    """Unknown statuses, a body after an error status, or a short update are refused."""
    good = struct.pack("<IIdIId", 0, 4, 1.5, 3, 2, 0.5) + struct.pack("<2f", 1, 2)
    assert abi.decode_train_output(good).correct == 3
    with pytest.raises(abi.OutputError, match="expected 8"):
        abi.decode_train_output(good[:-4])
    with pytest.raises(abi.OutputError, match="unknown status"):
        abi.decode_train_output(struct.pack("<IIdIId", 9, 0, 0, 0, 0, 0))
    with pytest.raises(abi.OutputError, match="no update"):
        abi.decode_train_output(struct.pack("<IIdIId", 1, 0, 0, 0, 2, 0) + bytes(8))


def test_limits_for_caps_declared_limits() -> None:
    """A manifest may lower the kind's limits, never raise them."""
    assert abi.limits_for("train", {"memory_bytes": 1 << 20}).memory_bytes == 1 << 20
    with pytest.raises(ValueError, match="memory_bytes"):
        abi.limits_for("train", {"memory_bytes": 1 << 40})


# ---- against the reference --------------------------------------------------------------------


@pytest.mark.parametrize("u8", [False, True])
def test_mlp_epoch_matches_reference(kernels, u8: bool) -> None:
    """SGD with momentum, FedProx and control variates: same update as the reference."""
    x, y = problem(53, 20, 3, seed=1, u8=u8)
    w = ref.init_dense(MLP_SIZES, 3)
    control = np.random.default_rng(2).normal(0, 0.01, w.size).astype(np.float32)
    kw = {
        "weights": w,
        "x": x,
        "y": y,
        "batch_size": 7,
        "seed": 5,
        "learning_rate": 0.1,
        "momentum": 0.9,
        "prox_mu": 0.01,
        "control": control,
    }
    result = train(kernels.runner("mlp"), MLP_SIZES, op="train", **kw)
    assert_matches(result, ref.run_reference(op="train", batch_fn=dense_fn(MLP_SIZES), **kw))


def test_momentum_buffer_round_trip(kernels) -> None:
    """A momentum buffer goes in and the new one comes back, as the reference computes."""
    x, y = problem(30, 20, 3, seed=4)
    w = ref.init_dense(MLP_SIZES, 1)
    velocity = np.random.default_rng(3).normal(0, 0.01, w.size).astype(np.float32)
    kw = {
        "weights": w,
        "x": x,
        "y": y,
        "batch_size": 8,
        "seed": 9,
        "learning_rate": 0.05,
        "momentum": 0.5,
        "momentum_buffer": velocity,
    }
    result = train(kernels.runner("mlp"), MLP_SIZES, op="train", return_momentum=True, **kw)
    expected = ref.run_reference(op="train", batch_fn=dense_fn(MLP_SIZES), **kw)
    assert_matches(result, expected)
    np.testing.assert_allclose(
        np.frombuffer(result.momentum, np.float32), expected.momentum, rtol=1e-4, atol=2e-5
    )


def test_logreg_epoch_and_eval_match_reference(kernels) -> None:
    """Plain SGD on logistic regression; eval reports loss and hits without an update."""
    sizes = [12, 4]
    x, y = problem(41, 12, 4, seed=6)
    w = ref.init_dense(sizes, 2)
    runner = kernels.runner("logreg")
    kw = {"weights": w, "x": x, "y": y, "batch_size": 10, "seed": 1, "learning_rate": 0.2}
    assert_matches(
        train(runner, sizes, op="train", **kw),
        ref.run_reference(op="train", batch_fn=dense_fn(sizes), **kw),
    )
    result = train(runner, sizes, op="eval", weights=w, x=x, y=y, batch_size=16)
    assert result.update is None
    assert result.update_l2 == 0.0
    assert_matches(
        result,
        ref.run_reference(op="eval", batch_fn=dense_fn(sizes), weights=w, x=x, y=y, batch_size=16),
    )


def test_cnn_epoch_matches_reference(kernels) -> None:
    """The paper's CNN on a few 28x28 u8 images, two minibatches and a remainder."""
    x, y = problem(10, 784, 10, seed=1, u8=True)
    w = ref.init_cnn(3)
    kw = {
        "weights": w,
        "x": x,
        "y": y,
        "batch_size": 4,
        "seed": 5,
        "learning_rate": 0.05,
        "momentum": 0.5,
        "prox_mu": 0.01,
    }
    result = train(kernels.runner("cnn"), [784, 10], op="train", n_params=ref.CNN_PARAMS, **kw)
    expected = ref.run_reference(op="train", batch_fn=ref.cnn_batch, **kw)
    assert_matches(result, expected)


# ---- finite differences -----------------------------------------------------------------------


def kernel_gradient(runner: KernelRunner, sizes, w, x, y, n_params=None) -> np.ndarray:
    """The mean gradient over all samples: one full batch with lr 1 gives update = -grad."""
    result = train(
        runner,
        sizes,
        op="train",
        weights=w,
        x=x,
        y=y,
        batch_size=len(y),
        learning_rate=1.0,
        n_params=n_params,
    )
    return -np.frombuffer(result.update, np.float32).astype(np.float64)


def eval_loss(runner: KernelRunner, sizes, w, x, y, n_params=None) -> float:
    """Mean loss from the eval op."""
    result = train(
        runner, sizes, op="eval", weights=w, x=x, y=y, batch_size=len(y), n_params=n_params
    )
    return result.mean_loss


def blocks(sizes, cnn: bool) -> list[tuple[int, int]]:
    """The weight matrices' [start, end) ranges in the parameter vector."""
    if cnn:
        dense = [(a + 52096, b + 52096) for a, b in blocks(list(ref.CNN_DENSE), False)]
        return [(0, 800), (832, 52032), *dense]
    out, off = [], 0
    for a, b in zip(sizes, sizes[1:], strict=False):
        out.append((off, off + a * b))
        off += a * b + b
    return out


@pytest.mark.parametrize(
    ("name", "sizes"), [("logreg", [6, 3]), ("mlp", [6, 5, 4, 3]), ("cnn", [784, 10])]
)
def test_gradient_matches_finite_differences(kernels, name: str, sizes) -> None:
    """Central differences of the eval loss agree with the trained gradient, per weight block.

    Directional derivatives (step 1e-3 along a unit vector in one block) rather than single
    coordinates: the signal is the block's gradient norm, well above float32 noise, and a step
    rarely crosses a ReLU or max-pool kink. Along the gradient itself the derivative must be the
    block's gradient norm; along a random direction, the projection (both within 3 % of it).
    """
    runner = kernels.runner(name)
    cnn = name == "cnn"
    n_params = ref.CNN_PARAMS if cnn else None
    x, y = problem(3 if cnn else 9, sizes[0], sizes[-1], seed=8)
    w = ref.init_cnn(4) if cnn else ref.init_dense(sizes, 4)
    grad = kernel_gradient(runner, sizes, w, x, y, n_params)
    rng = np.random.default_rng(0)
    eps = 1e-3
    for start, end in blocks(sizes, cnn):
        norm = np.linalg.norm(grad[start:end])
        assert norm > 1e-3
        for direction in (grad[start:end], rng.normal(size=end - start)):
            v = np.zeros(w.size)
            v[start:end] = direction / np.linalg.norm(direction)
            plus = (w + eps * v).astype(np.float32)
            minus = (w - eps * v).astype(np.float32)
            numeric = (
                eval_loss(runner, sizes, plus, x, y, n_params)
                - eval_loss(runner, sizes, minus, x, y, n_params)
            ) / (2 * eps)
            assert numeric == pytest.approx(grad @ v, abs=0.03 * norm), f"block {start}"


# ---- learning real data -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "sizes"), [("logreg", [64, 10]), ("mlp", [64, 32, 10])])
def test_digits_accuracy_rises_well_above_chance(kernels, name: str, sizes) -> None:
    """A few epochs on scikit-learn's 8x8 digits: held-out accuracy from ~10 % to over 90 %."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    order = np.random.default_rng(0).permutation(len(y))
    train_idx, test_idx = order[:1400], order[1400:]
    runner = kernels.runner(name)
    w = ref.init_dense(sizes, 0)
    before = train(
        runner, sizes, op="eval", weights=w, x=x[test_idx], y=y[test_idx], batch_size=64
    ).accuracy
    for epoch in range(5):
        result = train(
            runner,
            sizes,
            op="train",
            weights=w,
            x=x[train_idx],
            y=y[train_idx],
            batch_size=10,
            seed=epoch,
            learning_rate=0.05,
            momentum=0.5,
        )
        assert result.ok
        w = w + np.frombuffer(result.update, np.float32)
    after = train(
        runner, sizes, op="eval", weights=w, x=x[test_idx], y=y[test_idx], batch_size=64
    ).accuracy
    assert before < 0.3
    assert after > 0.9


# ---- non-finite values and errors -------------------------------------------------------------


@pytest.mark.parametrize("where", ["weights", "x", "control", "momentum_buffer"])
def test_non_finite_input_is_a_status(kernels, where: str) -> None:
    """A NaN or infinity in any float section gives status 2 and no update, never NaN bytes."""
    x, y = problem(8, 20, 3, seed=1)
    kw = {"weights": ref.init_dense(MLP_SIZES, 0), "x": x}
    kw["control"] = np.zeros(kw["weights"].size, np.float32)
    kw["momentum_buffer"] = np.zeros(kw["weights"].size, np.float32)
    kw[where] = kw[where].copy()
    kw[where].ravel()[3] = np.inf if where == "x" else np.nan
    data = abi.encode_train_input(
        op="train", sizes=MLP_SIZES, y=y, batch_size=4, learning_rate=0.1, momentum=0.9, **kw
    )
    output = kernels.runner("mlp").run(data)
    assert len(output) == abi.V2_METRICS_BYTES
    result = abi.decode_train_output(output)
    assert (result.status, result.update) == (abi.STATUS_NON_FINITE_INPUT, None)


def test_diverging_training_is_a_status(kernels) -> None:
    """A learning rate that overflows the weights gives status 1, not NaN weights."""
    x, y = problem(40, 20, 3, seed=2)
    x *= 1e6
    result = train(
        kernels.runner("mlp"),
        MLP_SIZES,
        op="train",
        weights=ref.init_dense(MLP_SIZES, 0),
        x=x,
        y=y,
        batch_size=4,
        learning_rate=1e30,
    )
    assert (result.status, result.update, result.loss_sum) == (
        abi.STATUS_NON_FINITE_RESULT,
        None,
        0.0,
    )


def encoded(sizes=MLP_SIZES, n=6, **overrides) -> bytes:
    """A valid small mlp call, with overrides."""
    x, y = problem(n, sizes[0], sizes[-1], seed=3)
    kw = {
        "op": "train",
        "sizes": sizes,
        "weights": ref.init_dense(sizes, 0),
        "x": x,
        "y": y,
        "batch_size": 4,
        "learning_rate": 0.1,
    }
    kw.update(overrides)
    return abi.encode_train_input(**kw)


def patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    """data with struct-packed values written at offset."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda d: patched(d, 0, "<I", 1), "wrong version"),
        (lambda d: patched(d, 4, "<I", 3), "unknown op"),
        (lambda d: patched(d, 8, "<I", 16), "unknown flag"),
        (lambda d: patched(d, 56, "<I", 5), "n_params does not fit the sizes"),
        (lambda d: patched(d, 52, "<I", 0), "batch size 0"),
        (lambda d: patched(d, 72, "<f", math.inf), "infinite learning rate"),
        (lambda d: patched(d, 76, "<f", -0.5), "negative momentum"),
        (lambda d: patched(d, 60, "<I", 1), "reserved field"),
        (lambda d: patched(d, 28, "<I", 7), "size after the last one"),
        (lambda d: d[:-16], "truncated"),
        (lambda d: d + bytes(16), "trailing bytes"),
        (lambda d: patched(d, len(d) - 32, "<I", 3), "label out of range"),
    ],
)
def test_bad_input_is_error_minus_one(kernels, mutate, why: str) -> None:
    """Malformed calls return -1 (bad input)."""
    with pytest.raises(KernelFailed, match="bad input") as info:
        kernels.runner("mlp").run(mutate(encoded()))
    assert info.value.code == abi.ERR_BAD_INPUT, why


def test_logreg_refuses_hidden_layers_and_cnn_other_shapes(kernels) -> None:
    """logreg takes exactly [inputs, classes]; cnn only [784, 10] with 1,663,370 params."""
    with pytest.raises(KernelFailed, match="bad input"):
        kernels.runner("logreg").run(encoded())
    with pytest.raises(KernelFailed, match="bad input"):
        kernels.runner("cnn").run(encoded(sizes=[784, 10]))


def test_memory_limit_is_enforced(kernels) -> None:
    """Under a 4 MiB memory limit the 2NN's scratch cannot grow: out of memory (-3)."""
    runner = kernels.runner("mlp", limits=abi.limits_for("train", {"memory_bytes": 4 << 20}))
    data = encoded(sizes=[784, 200, 200, 10], n=4)
    with pytest.raises(KernelFailed, match="out of memory") as info:
        runner.run(data)
    assert info.value.code == abi.ERR_OUT_OF_MEMORY
    assert kernels.runner("mlp").train(data).ok  # the manifest's limit is enough


def test_scratch_sizes_cannot_wrap_around(kernels) -> None:
    """A batch x width product past 4 GiB is out of memory, not a wrapped-around small buffer."""
    sizes = [4, 65536, 2]
    n = 70_000  # one batch of 70,000 rows x 65,536 hidden units: 18 GB of activations
    x = np.zeros((n, 4), dtype=np.uint8)
    data = abi.encode_train_input(
        op="train",
        sizes=sizes,
        weights=np.zeros(abi.dense_param_count(sizes), np.float32),
        x=x,
        y=np.zeros(n, dtype=np.int64),
        batch_size=n,
    )
    with pytest.raises(KernelFailed, match="out of memory"):
        kernels.runner("mlp").run(data)


def test_input_and_output_limits_are_enforced(kernels) -> None:
    """The host refuses inputs and outputs over the kernel's limits."""
    data = encoded()
    small_in = abi.limits_for("train", {"input_bytes": len(data) - 1})
    with pytest.raises(KernelFailed, match="exceeds"):
        kernels.runner("mlp", limits=small_in).run(data)
    small_out = abi.limits_for("train", {"output_bytes": 64})
    with pytest.raises(KernelFailed, match="exceeds 64"):
        kernels.runner("mlp", limits=small_out).run(data)


def test_manifest_declares_the_training_kernels(kernels) -> None:
    """Each training kernel: kind train, ABI 2, its parameter count and limits within the kind's."""
    assert set(kernels.training) == {"logreg", "mlp", "cnn"}
    assert kernels.training["mlp"]["parameters"] == abi.dense_param_count([784, 200, 200, 10])
    assert kernels.training["cnn"]["parameters"] == ref.CNN_PARAMS == abi.CNN_PARAM_COUNT
    for entry in kernels.training.values():
        assert (entry["kind"], entry["abi_version"]) == ("train", 2)
        limits = abi.limits_for("train", entry["limits"])
        runner = kernels.runner(entry["name"])
        assert runner.info.abi_version == 2
        assert runner.info.maximum_pages * abi.WASM_PAGE_BYTES == limits.memory_bytes


def test_same_bytes_same_output_after_other_calls(kernels) -> None:
    """Outputs depend only on the input bytes, not on earlier calls on the same instance."""
    runner = kernels.runner("mlp")
    first = runner.run(encoded(seed=3))
    runner.run(encoded(sizes=[784, 200, 200, 10], n=12))
    runner.run(encoded(op="eval", learning_rate=0.0))
    assert runner.run(encoded(seed=3)) == first
    assert runner.run(encoded(seed=4)) != first
