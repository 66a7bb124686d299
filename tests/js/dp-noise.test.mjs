// Unit tests for the browser's distributed-DP share sampler. Run: node --test tests/js/
// Seeded byte streams appear here only; the page draws from crypto.getRandomValues.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { addShare, noiseShare, poisson, skellamShare, uniforms } from "../../static/worker_frontend/dp-noise.js";
import { systemRandomBytes } from "../../static/worker_frontend/secagg-bytes.js";

function moments(values) {
  let sum = 0;
  let squares = 0;
  for (const v of values) {
    assert.ok(Number.isInteger(v));
    sum += v;
    squares += v * v;
  }
  const mean = sum / values.length;
  return { mean, variance: squares / values.length - mean * mean };
}

describe("dp-noise.js", () => {
  it("draws Poisson variables with their mean as mean and variance", () => {
    for (const mean of [2.5, 10, 600, 4e10]) {
      const n = 100000;
      const m = moments(poisson(mean, n));
      assert.ok(Math.abs(m.mean - mean) < 6 * Math.sqrt(mean / n), `mean ${m.mean} of ${mean}`);
      const se = Math.sqrt((2 * mean * mean + mean) / n);
      assert.ok(Math.abs(m.variance - mean) < 6 * se, `variance ${m.variance} of ${mean}`);
    }
  });

  it("draws Skellam shares of the requested variance from the CSPRNG", () => {
    const variance = 3e12;
    const share = skellamShare(100000, variance);
    const m = moments(share);
    assert.ok(Math.abs(m.mean) < 6 * Math.sqrt(variance / share.length), `mean ${m.mean}`);
    assert.ok(Math.abs(m.variance / variance - 1) < 6 * Math.sqrt(2 / share.length));
    const again = skellamShare(100000, variance);
    assert.notDeepEqual([...share.slice(0, 8)], [...again.slice(0, 8)]);
  });

  it("reads 53-bit uniforms, refuses unknown mechanisms and adds shares modulo 2^32", () => {
    const top = uniforms(2, (n) => new Uint8Array(n).fill(0xff));
    assert.ok(top[0] < 1 && top[0] === 1 - 2 ** -53);
    assert.throws(() => noiseShare(3, { mechanism: "gaussian", variance: 1 }), /unknown noise mechanism/);
    assert.equal(noiseShare(5, { mechanism: "skellam", variance: 9 }, systemRandomBytes).length, 5);
    assert.deepEqual([...addShare(Uint32Array.from([0, 5, 2 ** 32 - 1]), [-1, 2, 3])], [2 ** 32 - 1, 7, 2]);
    assert.deepEqual([...addShare(Uint32Array.from([7]), [-(2 ** 40) - 8])], [2 ** 32 - 1]);
  });
});
