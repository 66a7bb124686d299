import hashlib

import numpy as np
import onnx
import onnxruntime
import pytest

from jobs.federated import client, export
from tests.kernels import train_reference as ref


def _architecture(kernel, sizes):
    return export.Architecture.from_manifest(kernel.entry, sizes)


def _onnx_outputs(model_bytes, x):
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"x": x})
    return logits, probabilities


def _kernel_agrees(kernel, sizes, weights, x, logits):
    """The kernel's eval op, given the ONNX argmax as labels, finds every one correct, and its
    loss at those labels equals ONNX's cross-entropy."""
    predicted = logits.argmax(axis=1)
    evaluation = client.evaluate(kernel, sizes=sizes, weights=weights, x=x, y=predicted)
    assert evaluation.accuracy == 1.0
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    losses = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(x)), predicted]
    assert evaluation.mean_loss == pytest.approx(losses.mean(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(
    ("kernel_name", "sizes"), [("logreg", (64, 10)), ("mlp", (64, 32, 16, 10))]
)
def test_dense_models_export_to_onnx_with_the_kernels_predictions(
    built_kernels, digits_split, kernel_name, sizes
):
    kernel = client.load_training_kernel(kernel_name, built_kernels)
    weights = client.initial_weights("dense", sizes, seed=5)
    _, test = digits_split
    model = export.to_onnx(_architecture(kernel, sizes), weights)
    onnx.checker.check_model(onnx.load_from_string(model), full_check=True)
    logits, probabilities = _onnx_outputs(model, test.x)
    assert logits.shape == (len(test), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    layers = ref.split_dense(weights, sizes)
    activations = test.x
    for index, (matrix, bias) in enumerate(layers):
        activations = activations @ matrix + bias
        if index < len(layers) - 1:
            activations = np.maximum(activations, 0)
    np.testing.assert_allclose(logits, activations, rtol=1e-4, atol=1e-5)
    _kernel_agrees(kernel, sizes, weights, test.x, logits)


def test_the_cnn_exports_to_onnx_with_the_kernels_predictions(built_kernels):
    kernel = client.load_training_kernel("cnn", built_kernels)
    weights = client.initial_weights("cnn", (784, 10), seed=6)
    rng = np.random.default_rng(0)
    x = rng.random((16, 784), dtype=np.float32)
    model = export.to_onnx(_architecture(kernel, (784, 10)), weights)
    logits, _ = _onnx_outputs(model, x)
    reference_losses, _, _ = ref.cnn_batch(weights, x, logits.argmax(axis=1), False)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    onnx_losses = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(16), logits.argmax(1)]
    np.testing.assert_allclose(onnx_losses, reference_losses, rtol=1e-3, atol=1e-5)
    _kernel_agrees(kernel, (784, 10), weights, x, logits)


def test_model_blob_is_content_addressed_and_round_trips(logreg):
    architecture = _architecture(logreg, (64, 10))
    weights = client.initial_weights("dense", (64, 10), seed=1)
    digest, blob = export.model_blob(architecture, weights)
    assert digest == hashlib.sha256(blob).hexdigest()
    assert export.model_blob(architecture, weights.copy())[0] == digest
    assert export.model_blob(architecture, weights + np.float32(1e-3))[0] != digest
    back_architecture, back_weights = export.read_model_blob(blob, expected_sha256=digest)
    assert back_architecture == architecture
    assert np.array_equal(back_weights, weights)
    with pytest.raises(ValueError, match="sha256"):
        export.read_model_blob(blob[:-1] + bytes([blob[-1] ^ 1]), expected_sha256=digest)
    meta = export.model_metadata(
        architecture, sha256=digest, size_bytes=len(blob), version=3, metrics={"accuracy": 0.9}
    )
    assert meta["architecture"]["parameters"] == 650
    assert meta["sha256"] == digest


def test_wrong_weight_counts_are_refused(logreg):
    architecture = _architecture(logreg, (64, 10))
    with pytest.raises(ValueError, match="650"):
        export.model_blob(architecture, np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="650"):
        export.to_onnx(architecture, np.zeros(10, np.float32))
