// Unit tests for the browser's secure-aggregation client. Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { RequestRefused, SecAggClient, roundConfig } from "../../static/worker_frontend/secagg.js";
import { bytesReader, systemRandomBytes } from "../../static/worker_frontend/secagg-bytes.js";
import {
  decryptShares,
  encryptShares,
  expandMask,
  shamirReconstruct,
  shamirShare,
} from "../../static/worker_frontend/secagg-primitives.js";
import {
  addInPlace,
  clipL2,
  decodeSum,
  encode,
  scaleFor,
  withClipBit,
} from "../../static/worker_frontend/secagg-encoding.js";
import { neighbourCount, neighbours } from "../../static/worker_frontend/secagg-graph.js";

function config(n, dimension) {
  return roundConfig({
    job: "job-js",
    roundNumber: 1,
    sessionId: systemRandomBytes(32),
    graphSeed: systemRandomBytes(16),
    clientIds: Array.from({ length: n }, (_, i) => i + 1),
    dimension,
  });
}

// Relays a round among JS clients the way the Python server does, with nobody dropping.
async function roundToUnmask(cfg, inputs) {
  const clients = new Map(cfg.clientIds.map((id) => [id, new SecAggClient(cfg, id)]));
  const adverts = new Map();
  for (const [id, c] of clients) adverts.set(id, await c.advertiseKeys());
  const shared = new Map();
  for (const [id, c] of clients) {
    const keys = new Map([...c.neighbours].map((j) => [j, adverts.get(j)]));
    shared.set(id, (await c.shareKeys(keys)).ciphertexts);
  }
  const masked = new Map();
  for (const [id, c] of clients) {
    const incoming = new Map([...c.neighbours].map((j) => [j, shared.get(j).get(id)]));
    masked.set(id, (await c.maskedInput(incoming, inputs.get(id))).masked);
  }
  return { clients, masked };
}

describe("SecAggClient", () => {
  it("pairwise masks cancel: Σ masked − Σ self masks = Σ inputs", async () => {
    const cfg = config(9, 41);
    const inputs = new Map(
      cfg.clientIds.map((id) => [id, Uint32Array.from({ length: 41 }, (_, i) => id * 1000 + i)]),
    );
    const { clients, masked } = await roundToUnmask(cfg, inputs);
    const total = new Uint32Array(41);
    const expected = new Uint32Array(41);
    for (const [id, c] of clients) {
      addInPlace(total, masked.get(id), 1);
      addInPlace(total, await expandMask(c.selfSeed, 41), -1);
      addInPlace(expected, inputs.get(id), 1);
    }
    assert.deepEqual(total, expected);
  });

  it("refuses overlapping alive and dropped sets, and too few alive neighbours", async () => {
    const cfg = config(6, 4); // full graph: k = 5, t = 3
    const inputs = new Map(cfg.clientIds.map((id) => [id, new Uint32Array(4)]));
    const { clients } = await roundToUnmask(cfg, inputs);
    const one = clients.get(1);
    assert.throws(() => one.unmask([1, 2, 3, 4], [4]), RequestRefused);
    assert.throws(() => one.unmask([1, 2, 3], [4, 5, 6]), /fewer than t/);
    const answer = one.unmask([1, 2, 3, 4, 5], [6]);
    assert.deepEqual([...answer.shares.keys()].sort(), [2, 3, 4, 5, 6]);
  });
});

describe("primitives", () => {
  it("any t shares reconstruct; shares are field elements", () => {
    const secret = systemRandomBytes(32);
    const xs = [5, 9, 11, 200, 4096];
    const shares = shamirShare([secret], xs, 3);
    const want = BigInt("0x" + Buffer.from(secret).toString("hex"));
    for (const pick of [[0, 1, 2], [4, 2, 0], [1, 3, 4]]) {
      const got = shamirReconstruct(pick.map((i) => xs[i]), pick.map((i) => shares[i][0]));
      assert.equal(got, want);
    }
  });

  it("mask expansion starts at any coordinate", async () => {
    const key = systemRandomBytes(32);
    const whole = await expandMask(key, 40);
    for (let start = 0; start < 9; start++) {
      assert.deepEqual(await expandMask(key, 31 - start, start), whole.slice(start, 31));
    }
  });

  it("AES-GCM rejects a ciphertext addressed to someone else", async () => {
    const key = systemRandomBytes(32);
    const args = { key, sender: 1, receiver: 2, job: "j", roundNumber: 1 };
    const ciphertext = await encryptShares({ ...args, plaintext: new Uint8Array(66) });
    assert.deepEqual(await decryptShares({ ...args, ciphertext }), new Uint8Array(66));
    await assert.rejects(decryptShares({ ...args, receiver: 3, ciphertext }));
  });

  it("encodes with stochastic rounding and decodes the sum", () => {
    const scale = scaleFor(10, 1);
    const values = Float64Array.from([0.5, -0.25, 1.5, -3]);
    const random = bytesReader(new Uint8Array(16));
    const decoded = decodeSum(encode(values, { scale, bound: 1, randomBytes: random }), scale);
    [0.5, -0.25, 1, -1].forEach((v, i) => assert.ok(Math.abs(decoded[i] - v) <= 1 / scale));
  });

  it("clips to the L2 bound and appends the clip bit", () => {
    const input = Float64Array.from([3, 4]);
    const { clipped, withinBound } = clipL2(input, 1);
    assert.ok(Math.abs(clipped[0] - 0.6) < 1e-12 && Math.abs(clipped[1] - 0.8) < 1e-12);
    assert.equal(withinBound, false);
    assert.deepEqual([...input], [3, 4]);
    assert.deepEqual([...withClipBit(clipL2(input, 5).clipped, true)], [3, 4, 1]);
  });

  it("builds a k-regular graph with k = 2⌈log2 n⌉", async () => {
    assert.equal(neighbourCount(1000), 20);
    assert.equal(neighbourCount(7), 6);
    const ids = Array.from({ length: 50 }, (_, i) => i + 1);
    const graph = await neighbours(ids, new Uint8Array(1), 12);
    for (const [id, adjacent] of graph) {
      assert.equal(adjacent.size, 12);
      for (const j of adjacent) assert.ok(graph.get(j).has(id));
    }
  });
});
