// Runs the browser worker's kernel host (the code the Web Worker uses) on the built kernels.
// Needs the kernels built (`make wasm`); skips with a note otherwise.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import {
  KernelError, STATUS_NON_FINITE_INPUT, compileKernel, compileVerified, declaredMaximumPages, decodeTrainOutput,
  denseParamCount, encodeTrainInput, limitsFor, runKernel, runKernelBytes, runTraining, simdSupported,
} from "../../static/worker_frontend/kernel-runtime.js";
import { bytesToHex, encodeInput, sha256Hex } from "../../static/worker_frontend/protocol.js";

const BUILD = fileURLToPath(new URL("../../wasm/build/", import.meta.url));
const built = existsSync(`${BUILD}manifest.json`);
const manifest = built ? JSON.parse(readFileSync(`${BUILD}manifest.json`, "utf8")) : { kernels: [] };
const kernel = (name) => {
  const entry = [...manifest.kernels, ...(manifest.training_kernels ?? [])].find((k) => k.name === name);
  return { bytes: readFileSync(BUILD + entry.file), sha256: entry.sha256 };
};
const u64s = (bytes) => {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: bytes.length / 8 }, (_, i) => view.getBigUint64(8 * i, true));
};
const skip = built ? false : "kernels are not built (run `make wasm`)";

describe("kernel runtime", { skip }, () => {
  it("prime_count over [1, 100001) finds 9592 primes", async () => {
    const { bytes, sha256 } = kernel("prime_count");
    const out = await runKernelBytes(bytes, sha256, encodeInput(1n, 100001n, 0n));
    assert.equal(out.length, 8);
    assert.deepEqual(u64s(out), [9592n]);
  });

  it("one compiled module runs many tasks; outputs depend only on the input", async () => {
    const { bytes, sha256 } = kernel("prime_count");
    const module = await compileVerified(bytes, sha256);
    const a = runKernel(module, encodeInput(0n, 1000n, 0n));
    const b = runKernel(module, encodeInput(1000n, 100001n, 0n));
    assert.equal(u64s(a)[0] + u64s(b)[0], 9592n);
    assert.deepEqual(runKernel(module, encodeInput(0n, 1000n, 0n)), a);
    assert.deepEqual(u64s(a), [168n]);
  });

  it("handles u64 ranges above 2^53 (prime_count near 2^64)", async () => {
    const { bytes, sha256 } = kernel("prime_count");
    // The primes in [2^64 - 100, 2^64 - 1) are 2^64 - 95, 2^64 - 83 and 2^64 - 59.
    const hi = (1n << 64n) - 1n;
    const out = await runKernelBytes(bytes, sha256, encodeInput(hi - 99n, hi, 0n));
    assert.deepEqual(u64s(out), [3n]);
  });

  it("montecarlo_pi counts every sample", async () => {
    const { bytes, sha256 } = kernel("montecarlo_pi");
    const out = await runKernelBytes(bytes, sha256, encodeInput(0n, 100000n, 42n));
    const [inside, samples] = u64s(out);
    assert.equal(samples, 100000n);
    const pi = (4 * Number(inside)) / Number(samples);
    assert.ok(Math.abs(pi - Math.PI) < 0.05, `pi estimate ${pi}`);
  });

  it("refuses bytes whose sha256 differs, before compiling", async () => {
    const { bytes } = kernel("prime_count");
    await assert.rejects(compileVerified(bytes, "0".repeat(64)), (err) => err instanceof KernelError && err.code === "hash_mismatch");
    const tampered = new Uint8Array(bytes);
    tampered[tampered.length - 1] ^= 1;
    await assert.rejects(compileVerified(tampered, await sha256Hex(bytes)), (err) => err.code === "hash_mismatch");
  });

  it("reports a negative return as kernel_failed", async () => {
    const { bytes } = kernel("param_sweep");
    const module = await compileKernel(bytes);
    // param_sweep needs 8 params: none is bad input (-1).
    assert.throws(() => runKernel(module, encodeInput(0n, 10n, 0n)), (err) => err.code === "kernel_failed" && /-1/.test(err.message));
  });

  it("param_sweep returns sorted best_k records", async () => {
    const { bytes, sha256 } = kernel("param_sweep");
    // Rosenbrock on a 101 x 101 grid over [-2, 2]^2, keep 3: the minimum (1, 1) is a grid point.
    const out = await runKernelBytes(bytes, sha256, encodeInput(0n, 10201n, 0n, [0, -2, 2, 101, -2, 2, 101, 3]));
    assert.equal(out.length, 48);
    const view = new DataView(out.buffer);
    assert.equal(view.getFloat64(8, true), 0);
    assert.ok(view.getFloat64(24, true) <= view.getFloat64(40, true));
  });
});

describe("kernel shape checks", () => {
  // (module (func (export "f")))  — no memory, no ABI functions
  const NO_ABI = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, 2, 1, 0, 7, 5, 1, 1, 102, 0, 0, 10, 4, 1, 2, 0, 11]);
  // (module (import "env" "f" (func)))
  const WITH_IMPORT = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 2, 9, 1, 3, 101, 110, 118, 1, 102, 0, 0]);

  it("rejects modules with imports or without the ABI exports", async () => {
    await assert.rejects(compileKernel(WITH_IMPORT), (err) => err.code === "kernel_rejected" && /imports/.test(err.message));
    await assert.rejects(compileKernel(NO_ABI), (err) => err.code === "kernel_rejected" && /memory/.test(err.message));
    await assert.rejects(compileKernel(new Uint8Array([1, 2, 3])), (err) => err.code === "kernel_rejected");
  });

  it("detects SIMD support", () => {
    assert.equal(typeof simdSupported(), "boolean");
    assert.equal(simdSupported(), true); // V8 has shipped fixed-width SIMD since Node 16
  });

  it("encodes inputs the kernels accept", () => {
    assert.equal(bytesToHex(encodeInput(1n, 2n, 3n, [])).length, 64);
  });
});

// A deterministic stand-in for Math.random, so the training data are the same every run.
function lcg(seed) {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

function trainingProblem(sizes, n, seed) {
  const rand = lcg(seed);
  const classes = sizes[sizes.length - 1];
  const y = Array.from({ length: n }, (_, i) => i % classes);
  // Class c lights up feature c: easy to learn.
  const x = new Float32Array(n * sizes[0]).map((_, i) => (Math.floor(i / sizes[0]) % classes === i % sizes[0] ? 1 : 0) + 0.1 * rand());
  const weights = new Float32Array(denseParamCount(sizes)).map(() => 0.2 * (rand() - 0.5));
  return { x, y, weights };
}

describe("kernel ABI v2", { skip }, () => {
  const sizes = [8, 6, 4];
  const limits = (name) => {
    const l = manifest.training_kernels.find((k) => k.name === name).limits;
    return { inputBytes: l.input_bytes, outputBytes: l.output_bytes, memoryBytes: l.memory_bytes };
  };

  it("encodes the documented layout", () => {
    const weights = new Float32Array(denseParamCount([3, 2]));
    const bytes = encodeTrainInput({
      op: "train", sizes: [3, 2], weights, x: new Uint8Array(15), y: [0, 1, 0, 1, 1], batchSize: 2, seed: 7n,
      learningRate: 0.5, momentum: 0.25, proxMu: 0.125, control: weights, returnMomentum: true,
    });
    const view = new DataView(bytes.buffer);
    assert.deepEqual([0, 4, 8, 12, 16, 20, 48, 52, 56].map((o) => view.getUint32(o, true)), [2, 1, 11, 2, 3, 2, 5, 2, 8]);
    assert.equal(view.getBigUint64(64, true), 7n);
    assert.deepEqual([72, 76, 80].map((o) => view.getFloat32(o, true)), [0.5, 0.25, 0.125]);
    assert.equal(bytes.length, 96 + 32 + 32 + 16 + 32); // weights, control, X (15 -> 16), Y (20 -> 32)
    assert.equal(view.getUint32(176 + 4, true), 1);
  });

  it("trains the mlp: loss falls over epochs and the update is applied by the caller", async () => {
    const { bytes, sha256 } = kernel("mlp");
    const module = await compileVerified(bytes, sha256);
    let { x, y, weights } = trainingProblem(sizes, 64, 1);
    const evalLoss = () => runTraining(module, { op: "eval", sizes, weights, x, y, batchSize: 64 }, limits("mlp")).lossSum;
    const before = evalLoss();
    for (let epoch = 0; epoch < 10; epoch++) {
      const result = runTraining(module, { op: "train", sizes, weights, x, y, batchSize: 8, seed: BigInt(epoch), learningRate: 0.2, momentum: 0.5 });
      assert.equal(result.ok, true);
      assert.equal(result.samples, 64);
      weights = weights.map((w, i) => w + result.update[i]);
    }
    assert.ok(evalLoss() < before / 2, `loss ${before} -> ${evalLoss()}`);
  });

  it("gives the same bytes for the same call and returns the momentum buffer", async () => {
    const { bytes, sha256 } = kernel("mlp");
    const module = await compileVerified(bytes, sha256);
    const { x, y, weights } = trainingProblem(sizes, 20, 2);
    const call = { op: "train", sizes, weights, x, y, batchSize: 3, seed: 5n, learningRate: 0.1, momentum: 0.9, returnMomentum: true };
    const a = runKernel(module, encodeTrainInput(call));
    assert.deepEqual(runKernel(module, encodeTrainInput(call)), a);
    const result = decodeTrainOutput(a, { expectMomentum: true });
    assert.equal(result.momentum.length, weights.length);
    assert.ok(result.updateL2 > 0);
  });

  it("reports a non-finite input as a status, with no update", async () => {
    const { bytes, sha256 } = kernel("logreg");
    const module = await compileVerified(bytes, sha256);
    const { x, y, weights } = trainingProblem([8, 4], 10, 3);
    weights[2] = Number.NaN;
    const result = runTraining(module, { op: "train", sizes: [8, 4], weights, x, y, batchSize: 5, learningRate: 0.1 });
    assert.equal(result.status, STATUS_NON_FINITE_INPUT);
    assert.equal(result.update, null);
  });

  it("enforces the kind's and the manifest's limits", async () => {
    const { bytes, sha256 } = kernel("mlp");
    const module = await compileVerified(bytes, sha256);
    assert.equal(declaredMaximumPages(bytes) * 65536, limits("mlp").memoryBytes);
    const { x, y, weights } = trainingProblem(sizes, 4, 4);
    const input = encodeTrainInput({ op: "train", sizes, weights, x, y, batchSize: 2 });
    assert.throws(() => runKernel(module, input, { memoryBytes: 64 << 20 }), (err) => err.code === "kernel_rejected");
    assert.throws(() => runKernel(module, input, { inputBytes: input.length - 1 }), (err) => err.code === "kernel_failed" && /exceeds/.test(err.message));
    assert.throws(() => runKernel(module, input, { outputBytes: 64 }), (err) => err.code === "kernel_failed");
    assert.throws(() => limitsFor(2, { memoryBytes: 2 ** 40 }), (err) => err instanceof KernelError);
    assert.throws(() => limitsFor(4), (err) => err.code === "kernel_rejected");
    assert.deepEqual(limitsFor(3), { inputBytes: 256 << 20, outputBytes: 2 << 20, memoryBytes: 512 << 20 });
    const bad = new Uint8Array(input);
    new DataView(bad.buffer).setUint32(4, 9, true); // unknown op
    assert.throws(() => runKernel(module, bad), (err) => err.code === "kernel_failed" && /-1/.test(err.message));
  });

  it("v1 kernels keep the v1 limits", async () => {
    const { bytes } = kernel("prime_count");
    assert.equal(declaredMaximumPages(bytes), 256);
    assert.deepEqual(limitsFor(1), { inputBytes: 32 + 8 * 4096, outputBytes: 4 * 1024 * 1024, memoryBytes: 64 * 1024 * 1024 });
  });
});
