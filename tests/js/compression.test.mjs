// The page's update encodings (static/worker_frontend/compression.js) on literal arrays: layout,
// top-k's tie rule and residual (kept only once an upload is accepted), signs of ±0. Byte parity
// with the edge worker's ccgsc_worker/compression.py is checked in
// tests/edge_worker/test_training_js_parity.py. Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { ResidualStore, int8Payload, signPayload, topkSelect } from "../../static/worker_frontend/compression.js";

const header = (bytes) => {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  return [String.fromCharCode(bytes[0], bytes[1]), bytes[2], view.getUint32(4, true), Number(view.getBigUint64(8, true))];
};

describe("compression.js", () => {
  it("quantises values on the grid exactly, with one scale per block", () => {
    const update = Float32Array.from([127, -127, 0, 1, 64], (v) => v * 0.5);
    const payload = int8Payload(update, 1, 4);
    assert.equal(payload.length, 16 + 4 * 2 + 5);
    assert.deepEqual(header(payload), ["Q8", 1, 4, 5]);
    const view = new DataView(payload.buffer);
    assert.deepEqual([view.getFloat32(16, true), view.getFloat32(20, true)], [0.5, Math.fround(32 / 127)]);
    assert.deepEqual([...new Int8Array(payload.buffer, 24, 5)], [127, -127, 0, 1, 127]);
  });

  it("keeps the k largest magnitudes, ties to the lower index", () => {
    const { indices, values, rest } = topkSelect(Float32Array.from([1, -2, 2, 0.5, -2]), 2);
    assert.deepEqual([...indices], [1, 2]);
    assert.deepEqual([...values], [-2, 2]);
    assert.deepEqual([...rest], [1, 0, 0, 0.5, -2]);
    assert.throws(() => topkSelect(new Float32Array(3), 4), RangeError);
  });

  it("carries the residual only after an accepted upload", () => {
    const store = new ResidualStore();
    store.compress("j", Float32Array.from([0.1, -3, 0.2]), 1);
    store.discard("j");
    assert.deepEqual([...store.residual("j", 3)], [0, 0, 0]);
    store.compress("j", Float32Array.from([0.1, -3, 0.2]), 1);
    store.commit("j");
    assert.deepEqual([...store.residual("j", 3)], [Math.fround(0.1), 0, Math.fround(0.2)]);
    const payload = store.compress("j", Float32Array.from([0, 0, 0.1]), 1);
    assert.deepEqual(header(payload), ["TK", 1, 1, 3]);
    assert.equal(new DataView(payload.buffer).getUint32(16, true), 2); // 0.2 + 0.1 goes first
  });

  it("packs one bit per sign, −0 counted as positive", () => {
    const payload = signPayload(Float32Array.from([1, -1, -0, 0, -5, 2, 3, -1, -2]));
    assert.deepEqual(header(payload), ["SG", 1, 0, 9]);
    assert.deepEqual([...payload.subarray(16)], [0b10110110, 0]);
  });
});
