"""Property tests of ABI v2: the encoder's layout for any shape, and the kernels' parsing of
corrupted inputs (an error code or a well-formed output, never a trap)."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ccgsc_worker import abi
from ccgsc_worker.kernel import KernelFailed

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def calls(draw):
    """Small random v2 calls: shape, sample count, options."""
    sizes = draw(st.lists(st.integers(1, 9), min_size=2, max_size=4))
    sizes[-1] = max(sizes[-1], 2)
    n = draw(st.integers(0, 12))
    d = abi.dense_param_count(sizes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    u8 = draw(st.booleans())
    x = (
        rng.integers(0, 256, (n, sizes[0]), dtype=np.uint8)
        if u8
        else rng.normal(size=(n, sizes[0])).astype(np.float32)
    )
    options = {
        "control": rng.normal(0, 0.01, d).astype(np.float32) if draw(st.booleans()) else None,
        "momentum_buffer": np.zeros(d, np.float32) if draw(st.booleans()) else None,
        "return_momentum": draw(st.booleans()),
    }
    return {
        "op": "train",
        "sizes": sizes,
        "weights": rng.normal(0, 0.3, d).astype(np.float32),
        "x": x,
        "y": rng.integers(0, sizes[-1], n),
        "batch_size": draw(st.integers(1, 5)),
        "seed": draw(st.integers(0, 2**64 - 1)),
        "learning_rate": 0.05,
        "momentum": draw(st.sampled_from([0.0, 0.9])),
        "prox_mu": draw(st.sampled_from([0.0, 0.1])),
        **options,
    }


@SETTINGS
@given(calls())
def test_sections_are_aligned_and_sized(call) -> None:
    """Every section starts on 16 bytes and the total is what the header implies."""
    data = abi.encode_train_input(**call)
    n, d, features = len(call["y"]), abi.dense_param_count(call["sizes"]), call["sizes"][0]
    x_bytes = n * features * (1 if call["x"].dtype == np.uint8 else 4)
    copies = 1 + (call["control"] is not None) + (call["momentum_buffer"] is not None)
    align = lambda b: (b + 15) // 16 * 16  # noqa: E731
    assert len(data) == 96 + copies * align(4 * d) + align(x_bytes) + align(4 * n)
    assert struct.unpack_from("<4I", data, 48) == (n, call["batch_size"], d, 0)
    assert data[96 : 96 + 4 * d] == call["weights"].tobytes()


@SETTINGS
@given(calls())
def test_valid_calls_give_well_formed_outputs(kernels, call) -> None:
    """Any valid call returns a finite update of d floats (plus momentum when asked)."""
    result = kernels.runner("mlp").train(abi.encode_train_input(**call))
    d = abi.dense_param_count(call["sizes"])
    assert result.ok
    assert result.samples == len(call["y"])
    assert len(result.update) == 4 * d
    assert np.isfinite(np.frombuffer(result.update, np.float32)).all()
    assert (result.momentum is not None) == call["return_momentum"]


@SETTINGS
@given(calls(), st.integers(0, 95), st.integers(0, 255))
def test_corrupted_headers_never_trap(kernels, call, offset: int, value: int) -> None:
    """Any byte of the header overwritten: an error code (-1, -3) or a decodable output."""
    data = bytearray(abi.encode_train_input(**call))
    data[offset] = value
    runner = kernels.runner("mlp")
    try:
        output = runner.run(bytes(data))
    except KernelFailed as exc:
        code = exc.code  # a trap or a timeout has no code
    else:
        code = 0
    assert code in (0, abi.ERR_BAD_INPUT, abi.ERR_OUT_OF_MEMORY)
    if code:
        return
    flags = struct.unpack_from("<I", data, 8)[0]
    result = abi.decode_train_output(output, expect_momentum=bool(flags & abi.FLAG_MOMENTUM_OUT))
    assert result.status in abi.STATUS_TEXT
