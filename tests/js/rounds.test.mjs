// The page's round runner (static/worker_frontend/rounds.js): epochs go to the training Web
// Worker, its failures and crashes end the round `kernel_failed`, and stopping cancels rounds.
// A fake Web Worker and site stand in for the browser. Run: node --test tests/js/
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";

import { RoundRunner } from "../../static/worker_frontend/rounds.js";
import { deriveSeed } from "../../static/worker_frontend/training.js";

const sha = (bytes) => createHash("sha256").update(bytes).digest("hex");
const weights = new Uint8Array(16);
const module = new Uint8Array([0, 97, 115, 109]);

function shard() {
  const bytes = new Uint8Array(16 + 4 * 4 + 4 * 2);
  const view = new DataView(bytes.buffer);
  [0x44534343, 2, 2, 2].forEach((v, i) => view.setUint32(4 * i, v, true));
  return bytes;
}

const invite = {
  job: "00000000-0000-4000-8000-0000000000f1",
  round: 2,
  participation: 9,
  seed: "1",
  model: { version: 1, sha256: sha(weights), url: "/weights/w.f32", parameters: 4, sizes: [2, 2] },
  kernel: { name: "logreg", sha256: sha(module), url: "/fl/kernels/k.wasm" },
  hyperparameters: { epochs: 2, batch_size: 10, learning_rate: 0.1, momentum: 0, proximal_mu: 0 },
  data: { source: "public_partition", private: false, url: "/fl/shards/j/0.bin" },
  upload: { url: "/fl/uploads/", chunk_bytes: 1024, total_bytes: 48 },
  deadline_ms: 60_000,
};

const files = { "/weights/w.f32": weights, "/fl/shards/j/0.bin": shard(), "/fl/kernels/k.wasm": module };
const fetch = async (url) => {
  const body = files[new URL(url).pathname];
  return body ? new Response(body) : new Response("{}", { status: 404 });
};

/** A Web Worker stand-in: `answer(message, worker)` decides what it posts back. */
function fakeWorkers(answer) {
  const made = [];
  const create = (name) => {
    const worker = {
      name,
      terminated: false,
      messages: [],
      postMessage(message) {
        this.messages.push(message);
        queueMicrotask(() => answer(message, worker));
      },
      terminate() {
        this.terminated = true;
      },
    };
    made.push(worker);
    return worker;
  };
  return { made, create };
}

function runner(workers, onProgress = () => {}, send = () => {}) {
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));
  const rounds = new RoundRunner({
    workerUrl: "kernel-worker.js",
    origin: "http://site.test",
    createWorker: workers.create,
    fetch,
    onProgress,
    send,
    onFinished: (info, code, message) => finish({ info, code, message }),
  });
  return { rounds, finished };
}

describe("RoundRunner", () => {
  it("sends each epoch to the training worker with the checked module, and reports its failure", async () => {
    const workers = fakeWorkers((message, worker) =>
      worker.onmessage({ data: { type: "failed", id: message.id, code: "kernel_failed", message: "trap: unreachable" } }),
    );
    const stages = [];
    const { rounds, finished } = runner(workers, (info) => stages.push(info.stage));
    rounds.start(invite, { token: "t".repeat(40), capabilities: { simd: true, memory_mb: 4096 } });
    assert.deepEqual(rounds.active.map((r) => r.participation), [9]);
    const { info, code, message } = await finished;
    assert.equal(code, "kernel_failed");
    assert.match(message, /trap: unreachable/);
    assert.equal(info.participation, 9);
    assert.deepEqual(rounds.active, []);
    assert.equal(workers.made.length, 1);
    assert.equal(workers.made[0].name, "ccgsc-training");
    const [sent] = workers.made[0].messages;
    assert.equal(sent.type, "train");
    assert.equal(sent.kernel.sha256, invite.kernel.sha256);
    assert.deepEqual([...new Uint8Array(sent.kernel.bytes)], [...module]);
    assert.equal(sent.call.seed, deriveSeed(1n, 0)); // epoch 0 of the invite's seed
    assert.deepEqual([sent.call.op, sent.call.batchSize, sent.call.nParams], ["train", 2, 4]);
    assert.ok(stages.includes("fetching") && stages.includes("training"));
  });

  it("cancels the rounds and fails their pending epochs when stopped", async () => {
    const workers = fakeWorkers(() => {}); // never answers
    const { rounds, finished } = runner(workers);
    rounds.start(invite, { token: "t".repeat(40), capabilities: { simd: true } });
    while (!workers.made.length || !workers.made[0].messages.length) await new Promise((resolve) => setTimeout(resolve, 1));
    rounds.stop();
    const { code } = await finished;
    assert.equal(code, "cancelled");
    assert.equal(workers.made[0].terminated, true);
  });

  it("ends a round kernel_failed when the training worker crashes, and starts a new one next time", async () => {
    const workers = fakeWorkers((message, worker) => worker.onerror({ message: "out of memory" }));
    const { rounds, finished } = runner(workers);
    rounds.start(invite, { token: "t".repeat(40), capabilities: { simd: true } });
    const { code, message } = await finished;
    assert.equal(code, "kernel_failed");
    assert.match(message, /crashed: out of memory/);
    assert.equal(workers.made[0].terminated, true);
    assert.equal(rounds.trainer, null);
  });

  it("declines without SIMD before fetching anything", async () => {
    const workers = fakeWorkers(() => {});
    const { rounds, finished } = runner(workers);
    rounds.start(invite, { token: "t".repeat(40), capabilities: { simd: false } });
    assert.equal((await finished).code, "no_simd");
    assert.equal(workers.made.length, 0);
  });

  it("advertises a secure round's keys, trains, and ends secagg_dropped when no ciphertexts come", async () => {
    const trained = { ok: true, status: 0, samples: 2, lossSum: 1, correct: 1, updateL2: 0.5, update: new Float32Array([0.1, 0.2, 0.3, 0.4]), momentum: null };
    const workers = fakeWorkers((message, worker) => worker.onmessage({ data: { type: "trained", id: message.id, result: trained } }));
    const stages = [];
    const sent = [];
    const { rounds, finished } = runner(workers, (info) => stages.push(info.stage), (m) => sent.push(m));
    const key = "A".repeat(43);
    const secure = { ...invite, hyperparameters: { ...invite.hyperparameters, epochs: 1 }, deadline_ms: 300 };
    secure.secagg = { client: 1, clients: 3, threshold: 2, session: key, graph_seed: key, scale: 1000, bound: 1 };
    rounds.start(secure, { token: "t".repeat(40), capabilities: { simd: true } });
    const { code } = await finished;
    assert.equal(code, "secagg_dropped");
    assert.deepEqual(sent.map((m) => [m.type, m.participation]), [["secagg_advertise", 9]]);
    assert.ok(stages.includes("masking"));
    assert.deepEqual(rounds.secure.active, []); // its secrets are gone
  });

  it("runs an analytics round's kernel in the training worker on its shard and uploads its output", async () => {
    const output = new Uint8Array(32 + 4 * 5);
    new DataView(output.buffer).setUint32(20, 5, true); // d = 3 + 2 bins
    const workers = fakeWorkers((message, worker) => worker.onmessage({ data: { type: "done", id: message.id, output: output.slice().buffer } }));
    const stages = [];
    const { rounds, finished } = runner(workers, (info) => stages.push(info.stage));
    const { model: _model, hyperparameters: _hyperparameters, ...rest } = invite;
    const analytics = {
      ...rest,
      analytics: { columns: [{ name: "a", feature: 1, lo: 0, hi: 1, bins: 2 }], max_rows: 10, dimension: 5 },
      upload: { ...invite.upload, total_bytes: output.length },
    };
    rounds.start(analytics, { token: "t".repeat(40), capabilities: { simd: true } });
    const { code, message, info } = await finished;
    // the fake site has no upload endpoint: the round got as far as uploading the kernel's output
    assert.deepEqual([code, message, info.epochs], ["rejected", "404: ", 0]);
    assert.deepEqual(stages.filter((s, i) => s !== stages[i - 1]), ["fetching", "summarising", "uploading"]);
    const [run] = workers.made[0].messages;
    assert.equal(run.type, "run");
    const header = new Uint32Array(run.input, 0, 5);
    assert.deepEqual([...header], [1, 2, 2, 1, 10]); // summarise, 2 rows of 2 features, 1 column, max 10
    assert.equal(run.input.byteLength, 32 + 16 + 4 * 4);
  });

  it("declines an analytics round on local data when nothing is kept for the job", async () => {
    const workers = fakeWorkers(() => {});
    const { rounds, finished } = runner(workers);
    const { model: _model, hyperparameters: _hyperparameters, ...rest } = invite;
    const analytics = { ...rest, data: { source: "contributor_local", private: true }, analytics: { columns: [{ name: "a", feature: 0, lo: 0, hi: 1, bins: 2 }], max_rows: 10, dimension: 5 } };
    rounds.start(analytics, { token: "t".repeat(40), capabilities: { simd: true } });
    const { code, message } = await finished;
    assert.equal(code, "no_local_data");
    assert.match(message, /IndexedDB|No local data/);
    assert.equal(workers.made.length, 0);
  });
});
