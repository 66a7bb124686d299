"""Model versions as content-addressed blobs, and export to ONNX.

A blob is ``CCMODEL1`` + u32 length + canonical JSON architecture + f32 little-endian weights;
its sha256 is its address, so equal models have equal keys and a stored blob can be checked
against its name. The architecture comes from the kernel's manifest entry (kernel name and
digest, type, sizes, parameter count). Metadata that may grow (round, metrics, parent) sits in a
JSON document next to the blob, outside the hash.

``to_onnx`` builds an ONNX graph (opset 17) with the same function as the kernels' forward pass:
input ``x`` float32 [N, inputs] in [0, 1], outputs ``logits`` and ``probabilities`` [N, classes].
Dense stacks are MatMul + Add (+ Relu); the CNN reshapes to NCHW, runs the two 5×5 'same'
convolutions with ReLU and 2×2 max pools, flattens in the kernel's HWC order and runs its dense
stack. Weights are re-laid out from the kernel's (HWC, rows ``(ky·5+kx)·C + c``) to ONNX's OIHW.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

_MAGIC = b"CCMODEL1"
ONNX_OPSET = 17


@dataclass(frozen=True)
class Architecture:
    """What a weight vector means: the kernel and its sizes (``type`` dense or cnn)."""

    kernel: str
    kernel_sha256: str
    type: str
    sizes: tuple[int, ...]
    parameters: int

    @classmethod
    def from_manifest(cls, entry: dict[str, Any], sizes: tuple[int, ...]) -> Architecture:
        """From a ``training_kernels`` manifest entry and the job's sizes."""
        kind = entry["architecture"]["type"]
        if kind == "cnn":
            parameters = int(entry["parameters"])
        else:
            parameters = sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))
        return cls(entry["name"], entry["sha256"], kind, tuple(sizes), parameters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "kernel_sha256": self.kernel_sha256,
            "type": self.type,
            "sizes": list(self.sizes),
            "parameters": self.parameters,
            "dtype": "float32-le",
        }


def model_blob(architecture: Architecture, weights: np.ndarray) -> tuple[str, bytes]:
    """(sha256 hex, blob bytes) of a model: header, canonical JSON architecture, f32 weights."""
    if weights.shape != (architecture.parameters,):
        raise ValueError(f"expected {architecture.parameters} weights, got {weights.shape}")
    if not np.isfinite(weights).all():
        raise ValueError("weights are not finite")
    header = json.dumps(architecture.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    blob = _MAGIC + struct.pack("<I", len(header)) + header + weights.astype("<f4").tobytes()
    return hashlib.sha256(blob).hexdigest(), blob


def read_model_blob(
    blob: bytes, *, expected_sha256: str | None = None
) -> tuple[Architecture, np.ndarray]:
    """Parse a blob (checking its digest when given): the architecture and f32[d] weights."""
    if expected_sha256 is not None and hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise ValueError("model blob does not match its sha256")
    if blob[: len(_MAGIC)] != _MAGIC:
        raise ValueError("not a model blob")
    (length,) = struct.unpack_from("<I", blob, len(_MAGIC))
    start = len(_MAGIC) + 4
    meta = json.loads(blob[start : start + length])
    architecture = Architecture(
        meta["kernel"],
        meta["kernel_sha256"],
        meta["type"],
        tuple(meta["sizes"]),
        meta["parameters"],
    )
    weights = np.frombuffer(blob, dtype="<f4", offset=start + length).astype(np.float32)
    if weights.shape != (architecture.parameters,):
        raise ValueError("model blob is truncated")
    return architecture, weights


def model_metadata(
    architecture: Architecture,
    *,
    sha256: str,
    size_bytes: int,
    version: int,
    round_number: int | None = None,
    metrics: dict[str, float] | None = None,
    parent_sha256: str | None = None,
) -> dict[str, Any]:
    """The JSON document stored next to a blob (not part of its hash)."""
    return {
        "sha256": sha256,
        "size_bytes": size_bytes,
        "version": version,
        "round": round_number,
        "metrics": metrics or {},
        "parent_sha256": parent_sha256,
        "architecture": architecture.to_dict(),
    }


def _dense_layers(
    weights: np.ndarray, sizes: tuple[int, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    layers, offset = [], 0
    for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
        matrix = weights[offset : offset + fan_in * fan_out].reshape(fan_in, fan_out)
        offset += fan_in * fan_out
        layers.append((matrix, weights[offset : offset + fan_out]))
        offset += fan_out
    if offset != weights.shape[0]:
        raise ValueError("weights do not match the sizes")
    return layers


def to_onnx(architecture: Architecture, weights: np.ndarray) -> bytes:
    """The model as a serialised ONNX ``ModelProto`` (checked with ``onnx.checker``)."""
    import onnx  # optional at import time: only export needs it
    from onnx import TensorProto, helper, numpy_helper

    if weights.shape != (architecture.parameters,):
        raise ValueError(f"expected {architecture.parameters} weights, got {weights.shape}")
    w = weights.astype(np.float32)
    nodes: list[Any] = []
    initializers: list[Any] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value, name))
        return name

    def dense_stack(source: str, layers: list[tuple[np.ndarray, np.ndarray]], prefix: str) -> str:
        current = source
        for index, (matrix, bias) in enumerate(layers):
            product, summed = f"{prefix}{index}_mm", f"{prefix}{index}_out"
            w_name = constant(f"{prefix}{index}_W", np.ascontiguousarray(matrix))
            b_name = constant(f"{prefix}{index}_b", np.ascontiguousarray(bias))
            nodes.append(helper.make_node("MatMul", [current, w_name], [product]))
            nodes.append(helper.make_node("Add", [product, b_name], [summed]))
            current = summed
            if index < len(layers) - 1:
                nodes.append(helper.make_node("Relu", [current], [f"{current}_relu"]))
                current = f"{current}_relu"
        return current

    inputs, classes = architecture.sizes[0], architecture.sizes[-1]
    if architecture.type == "dense":
        logits = dense_stack("x", _dense_layers(w, architecture.sizes), "dense")
    elif architecture.type == "cnn":
        conv1 = w[:800].reshape(5, 5, 1, 32).transpose(3, 2, 0, 1)  # (ky,kx,c,o) -> OIHW
        b1 = w[800:832]
        conv2 = w[832:52032].reshape(5, 5, 32, 64).transpose(3, 2, 0, 1)
        b2 = w[52032:52096]
        shape_nhwc = constant("shape_nhwc", np.array([-1, 28, 28, 1], dtype=np.int64))
        shape_flat = constant("shape_flat", np.array([-1, 3136], dtype=np.int64))
        nodes += [
            helper.make_node("Reshape", ["x", shape_nhwc], ["img_nhwc"]),
            helper.make_node("Transpose", ["img_nhwc"], ["img"], perm=[0, 3, 1, 2]),
        ]
        current = "img"
        for index, (kernel, bias) in enumerate(((conv1, b1), (conv2, b2)), start=1):
            k_name = constant(f"conv{index}_W", np.ascontiguousarray(kernel))
            b_name = constant(f"conv{index}_b", np.ascontiguousarray(bias))
            nodes += [
                helper.make_node(
                    "Conv",
                    [current, k_name, b_name],
                    [f"conv{index}"],
                    pads=[2, 2, 2, 2],
                    kernel_shape=[5, 5],
                ),
                helper.make_node("Relu", [f"conv{index}"], [f"relu{index}"]),
                helper.make_node(
                    "MaxPool",
                    [f"relu{index}"],
                    [f"pool{index}"],
                    kernel_shape=[2, 2],
                    strides=[2, 2],
                ),
            ]
            current = f"pool{index}"
        nodes += [
            helper.make_node("Transpose", [current], ["pool_nhwc"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["pool_nhwc", shape_flat], ["flat"]),
        ]
        logits = dense_stack("flat", _dense_layers(w[52096:], (3136, 512, 10)), "dense")
    else:
        raise ValueError(f"unknown architecture type {architecture.type!r}")
    nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        f"ccgsc_{architecture.kernel}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="ccgsc",
        ir_version=8,
    )
    model.doc_string = json.dumps(architecture.to_dict(), sort_keys=True)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
