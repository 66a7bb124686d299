// The update maths after the kernel (static/worker_frontend/update-maths.js): DP clipping and
// SCAFFOLD's correction and body, on literal arrays. Byte parity with the edge worker's dp.py and
// training.py is checked in tests/edge_worker/test_training_js_parity.py. Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { clipUpdate, controlCorrection, scaffoldBody } from "../../static/worker_frontend/update-maths.js";

describe("update-maths.js", () => {
  it("clips an update to its L2 norm and leaves one within unchanged", () => {
    const update = new Float32Array([3, 4]);
    const clipped = clipUpdate(update, 1);
    assert.deepEqual([...clipped.update], [Math.fround(0.6), Math.fround(0.8)]);
    assert.equal(clipped.within, false);
    assert.ok(Math.abs(clipped.norm - 1) < 1e-7);
    const within = clipUpdate(update, 5);
    assert.equal(within.update, update);
    assert.deepEqual([within.norm, within.within], [5, true]);
    assert.throws(() => clipUpdate(update, 0), RangeError);
  });

  it("corrects with c − cᵢ (c alone when the server holds no cᵢ)", () => {
    const control = new Float32Array([1, 2]);
    assert.equal(controlCorrection(control, null), control);
    assert.deepEqual([...controlCorrection(control, new Float32Array([0.5, 3]))], [0.5, -1]);
  });

  it("appends Δc = −c − Δy / (K·η) to the trained body", () => {
    // 10 samples, batch 4, 2 epochs → K = 2 · ⌈10 / 4⌉ = 6 steps; η = 0.5 → Δy / 3
    const body = new Uint8Array(32 + 8);
    const view = new DataView(body.buffer);
    view.setUint32(4, 10, true);
    view.setFloat32(32, 3, true);
    view.setFloat32(36, -6, true);
    const hyperparameters = { epochs: 2, batch_size: 4, learning_rate: 0.5 };
    const out = scaffoldBody(body, { control: new Float32Array([1, -1]), hyperparameters });
    assert.equal(out.length, 48);
    assert.deepEqual([...out.subarray(0, 40)], [...body]);
    assert.deepEqual([...new Float32Array(out.slice(40).buffer)], [-2, 3]);
  });
});
