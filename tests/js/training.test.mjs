// The worker page's FL round (static/worker_frontend/training.js): seeds, shards, the exact sum,
// the upload's outcome codes, declines and the local-data seam. The byte-for-byte comparison with
// the edge worker runs in tests/edge_worker/test_training_js_parity.py. Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  Http,
  RoundError,
  declineReason,
  decodeShard,
  deriveSeed,
  fsum,
  runRound,
  uploadUpdate,
} from "../../static/worker_frontend/training.js";

const ORIGIN = "http://site.test";
const json = (status, value) => new Response(JSON.stringify(value), { status });

/** An Http whose fetch answers from `handler(method, path, init)` and logs each request. */
function fakeHttp(handler) {
  const log = [];
  const fetch = async (url, init = {}) => {
    const { pathname } = new URL(url);
    log.push(`${init.method ?? "GET"} ${pathname}`);
    return handler(init.method ?? "GET", pathname, init);
  };
  return { http: new Http({ origin: ORIGIN, token: "t".repeat(40), fetch }), log };
}

const upload = (http, overrides = {}) =>
  uploadUpdate({
    http,
    url: "/fl/uploads/",
    participation: 7,
    baseVersion: 2,
    body: new Uint8Array(100).fill(3),
    chunkBytes: 40,
    timeLeft: () => 1e9,
    sleep: async () => {},
    ...overrides,
  });

function shardBytes(n, features) {
  const bytes = new Uint8Array(16 + 4 * n * features + 4 * n);
  const view = new DataView(bytes.buffer);
  [0x44534343, n, features, 10].forEach((v, i) => view.setUint32(4 * i, v, true));
  for (let i = 0; i < n * features; i++) view.setFloat32(16 + 4 * i, i / 10, true);
  for (let i = 0; i < n; i++) view.setInt32(16 + 4 * n * features + 4 * i, i % 10, true);
  return bytes;
}

describe("training.js", () => {
  it("derives the same SplitMix64 seeds as the edge worker", () => {
    assert.equal(deriveSeed(99n, 0), 4824385676517010403n);
    assert.equal(deriveSeed("99", 1), 2532601429470541124n);
    assert.equal(deriveSeed((1n << 64n) - 1n, 3, 5), 12303721270012094144n);
  });

  it("decodes a shard and refuses what is not one", () => {
    const { x, y, n, features } = decodeShard(shardBytes(3, 2));
    assert.deepEqual([n, features, x.length, [...y]], [3, 2, 6, [0, 1, 2]]);
    assert.ok(Math.abs(x[5] - 0.5) < 1e-7);
    const bad = shardBytes(3, 2);
    bad[0] = 0;
    assert.throws(() => decodeShard(bad), (err) => err instanceof RoundError && err.code === "bad_shard");
    assert.throws(() => decodeShard(shardBytes(3, 2).subarray(0, 20)), { code: "bad_shard" });
    assert.throws(() => decodeShard(shardBytes(0, 2)), { code: "bad_shard" });
  });

  it("sums exactly, as Python's math.fsum", () => {
    assert.equal(fsum([1e16, 1, -1e16]), 1);
    assert.equal(fsum(Array(10).fill(0.1)), 1);
    assert.equal(fsum([]), 0);
    assert.equal(fsum([1, 1e100, 1, -1e100]), 2);
  });

  it("uploads every chunk with its checksum and completes", async () => {
    const seen = [];
    const { http, log } = fakeHttp((method, path, init) => {
      if (path === "/fl/uploads/") return json(201, { upload: "u1", chunk_count: 3, chunks_received: [1] });
      if (method === "PUT") {
        seen.push([path, init.headers["X-Chunk-SHA256"], init.body.length]);
        return json(200, {});
      }
      return json(202, {});
    });
    const progress = [];
    assert.deepEqual(await upload(http, { onProgress: (sent, total) => progress.push([sent, total]) }), { code: "uploaded", message: "" });
    assert.deepEqual(log, ["POST /fl/uploads/", "PUT /fl/uploads/u1/chunks/0", "PUT /fl/uploads/u1/chunks/2", "POST /fl/uploads/u1/complete"]);
    assert.deepEqual(seen.map(([path, , size]) => [path, size]), [["/fl/uploads/u1/chunks/0", 40], ["/fl/uploads/u1/chunks/2", 20]]);
    assert.match(seen[0][1], /^[0-9a-f]{64}$/);
    assert.deepEqual(progress.at(-1), [100, 100]);
  });

  it("ends late when the round closed, rejected with the server's reason, upload_failed after 5 tries", async () => {
    const closed = fakeHttp(() => json(409, { error: { code: "round_closed", message: "closed" } }));
    assert.equal((await upload(closed.http)).code, "late");
    assert.ok(!closed.log.some((line) => line.startsWith("PUT")));
    const refused = fakeHttp((method, path) =>
      path === "/fl/uploads/" ? json(201, { upload: "u1", chunk_count: 3, chunks_received: [0, 1, 2] }) : json(422, { rejection: { code: "non_finite", message: "NaN" } }),
    );
    assert.deepEqual(await upload(refused.http), { code: "rejected", message: "non_finite: NaN" });
    const down = fakeHttp(() => json(503, {}));
    await assert.rejects(upload(down.http), { code: "upload_failed" });
    assert.equal(down.log.length, 5);
    const bad = fakeHttp(() => json(400, { error: { code: "bad_request", message: "base_version" } }));
    assert.deepEqual(await upload(bad.http), { code: "rejected", message: "bad_request: base_version" });
  });

  it("respects the deadline and stays on the site's origin", async () => {
    const { http, log } = fakeHttp(() => json(201, {}));
    await assert.rejects(upload(http, { timeLeft: () => 0 }), { code: "deadline" });
    assert.deepEqual(log, []);
    await assert.rejects(http.request("GET", "https://elsewhere.test/w.f32"), { code: "fetch_failed" });
  });

  it("declines what the device cannot train", () => {
    const invite = { model: { parameters: 1_000_000 } };
    assert.equal(declineReason(invite, { simd: false }), "no_simd");
    assert.equal(declineReason(invite, { simd: true, memoryMb: 8 }), "low_memory");
    assert.equal(declineReason(invite, { simd: true, memoryMb: 4096 }), null);
    assert.equal(declineReason(invite, { simd: true }), null);
  });

  describe("runRound", () => {
    const invite = (data) => ({
      job: "00000000-0000-4000-8000-0000000000f1",
      participation: 3,
      seed: "5",
      model: { version: 0, sha256: "ab".repeat(32), url: "/weights/w.f32", parameters: 4, sizes: [2, 2] },
      kernel: { name: "logreg", sha256: "cd".repeat(32), url: "/fl/kernels/k.wasm" },
      hyperparameters: { epochs: 1, batch_size: 10, learning_rate: 0.1, momentum: 0, proximal_mu: 0 },
      data,
      upload: { url: "/fl/uploads/", chunk_bytes: 1024, total_bytes: 48 },
    });
    const deps = (http, extra = {}) => ({
      http,
      openKernel: async () => {
        throw new Error("no kernel in this test");
      },
      deadline: 1e9,
      clock: () => 0,
      capabilities: { simd: true },
      sleep: async () => {},
      ...extra,
    });

    it("ends no_local_data when the local-data module is missing or throws, before any fetch", async () => {
      const { http, log } = fakeHttp(() => json(404, {}));
      const privateData = invite({ source: "contributor_local", private: true });
      const missing = await runRound(privateData, deps(http, { loadLocalData: () => import("./no-such-module.js") }));
      assert.equal(missing.code, "no_local_data");
      const refused = await runRound(
        privateData,
        deps(http, {
          loadLocalData: async () => ({
            localShard: async () => {
              throw Object.assign(new Error("no consent for this job"), { code: "no_data" });
            },
          }),
        }),
      );
      assert.deepEqual(refused, { code: "no_local_data", message: "no consent for this job" });
      assert.deepEqual(log, []);
    });

    it("trains on the contributor's local shard without fetching one", async () => {
      const weights = new Uint8Array(16);
      const { sha256Hex } = await import("../../static/worker_frontend/protocol.js");
      const job = invite({ source: "contributor_local", private: true });
      job.model.sha256 = await sha256Hex(weights);
      const { http, log } = fakeHttp((method, path) => (path === "/weights/w.f32" ? new Response(weights) : json(404, {})));
      const localShard = async (jobId, spec) => {
        assert.equal(jobId, job.job);
        assert.equal(spec.private, true);
        return { x: new Float32Array([1, 2, 3, 4]), y: new Int32Array([0, 1]), n: 2, features: 2 };
      };
      const outcome = await runRound(job, deps(http, { loadLocalData: async () => ({ localShard }) }));
      // the kernel fetch fails here (404): everything before it used the local shard
      assert.equal(outcome.code, "fetch_failed");
      assert.deepEqual(log, ["GET /weights/w.f32", "GET /fl/kernels/k.wasm"]);
    });

    it("counts a fetch refused because the job stopped as a late round, not a failure", async () => {
      // the job was paused while this worker fetched its shard: the server answers 409 round_closed
      const weights = new Uint8Array(16);
      const { sha256Hex } = await import("../../static/worker_frontend/protocol.js");
      const job = invite({ source: "public_partition", private: false, url: "/fl/shards/j/0.bin" });
      job.model.sha256 = await sha256Hex(weights);
      const closed = json(409, { error: { code: "round_closed", message: "the job is not running" } });
      const { http, log } = fakeHttp((method, path) => (path === "/weights/w.f32" ? new Response(weights) : closed));
      const outcome = await runRound(job, deps(http));
      assert.deepEqual(outcome, { code: "late", message: "the round closed before its data arrived" });
      assert.deepEqual(log, ["GET /weights/w.f32", "GET /fl/shards/j/0.bin"]); // not retried
      // any other refusal of a fetch stays a failed fetch
      const other = fakeHttp((method, path) => (path === "/weights/w.f32" ? new Response(weights) : json(409, { error: { code: "conflict" } })));
      assert.equal((await runRound(job, deps(other.http))).code, "fetch_failed");
    });

    it("refuses weights that do not match their hash, and declines without SIMD", async () => {
      const { http } = fakeHttp(() => new Response(new Uint8Array(16)));
      const publicData = invite({ source: "public_partition", private: false, url: "/fl/shards/j/0.bin" });
      assert.equal((await runRound(publicData, deps(http))).code, "hash_mismatch");
      const declined = await runRound(publicData, deps(http, { capabilities: { simd: false } }));
      assert.equal(declined.code, "no_simd");
      const controller = new AbortController();
      controller.abort();
      assert.equal((await runRound(publicData, deps(http, { signal: controller.signal }))).code, "cancelled");
    });
  });
});
