// Runs whole FL rounds through the page's training.js against an in-memory site, and prints what
// each uploaded. Used by tests/edge_worker/test_training_js_parity.py, which computes the same
// rounds with the edge worker's train_update and expects identical bytes. Not a test on its own.
//   stdin:  {"cases": [{"invite": {...}, "files": {"/path": "<file on disk>"}, "drop": [i],
//                       "corrupt": [i]}]}
//   stdout: [{"code", "message", "body_b64", "log": ["METHOD path", ...], "chunk_headers": [..]}]
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

import { compileVerified, runTraining } from "../../static/worker_frontend/kernel-runtime.js";
import { Http, runRound } from "../../static/worker_frontend/training.js";

const ORIGIN = "http://site.test";
const TOKEN = "t".repeat(40);
const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");
const json = (status, value) => new Response(JSON.stringify(value), { status, headers: { "Content-Type": "application/json" } });

/** The site: files by path, and the upload protocol (chunks checked against X-Chunk-SHA256). */
function site({ files, drop = [], corrupt = [] }) {
  const served = Object.fromEntries(Object.entries(files).map(([path, file]) => [path, readFileSync(file)]));
  const dropping = new Set(drop);
  const corrupting = new Set(corrupt);
  const log = [];
  const chunkHeaders = [];
  let spec = null;
  const chunks = new Map();
  const state = () => ({
    upload: "u1",
    chunk_count: Math.ceil(spec.total_bytes / spec.chunk_size),
    chunks_received: [...chunks.keys()].sort((a, b) => a - b),
  });
  const body = () => Buffer.concat([...chunks.keys()].sort((a, b) => a - b).map((i) => chunks.get(i)));
  async function fetch(url, init = {}) {
    const { origin, pathname } = new URL(url);
    const method = init.method ?? "GET";
    log.push(`${method} ${pathname}`);
    if (origin !== ORIGIN || init.headers?.Authorization !== `Worker ${TOKEN}`) return json(401, { error: { code: "unauthorized" } });
    if (method === "GET" && pathname in served) return new Response(served[pathname], { status: 200 });
    if (method === "POST" && pathname === "/fl/uploads/") {
      const asked = JSON.parse(init.body);
      if (spec && JSON.stringify(spec) !== JSON.stringify(asked)) return json(400, { error: { code: "bad_request" } });
      spec = asked;
      return json(201, state());
    }
    const put = pathname.match(/^\/fl\/uploads\/u1\/chunks\/(\d+)$/);
    if (method === "PUT" && put) {
      const index = Number(put[1]);
      if (dropping.delete(index)) throw new TypeError("Failed to fetch");
      let data = Buffer.from(init.body);
      chunkHeaders.push(init.headers["X-Chunk-SHA256"]);
      if (corrupting.delete(index)) data = Buffer.concat([Buffer.from([data[0] ^ 0xff]), data.subarray(1)]);
      if (sha256(data) !== init.headers["X-Chunk-SHA256"]) return json(400, { error: { code: "checksum_mismatch" } });
      chunks.set(index, data);
      return json(200, { stored: true });
    }
    if (method === "POST" && pathname === "/fl/uploads/u1/complete") {
      if (chunks.size < state().chunk_count) return json(400, { error: { code: "incomplete" } });
      if (sha256(body()) !== spec.sha256) return json(422, { rejection: { code: "sha256_mismatch" } });
      return json(202, state());
    }
    return json(404, { error: { code: "not_found" } });
  }
  return { fetch, log, chunkHeaders, body };
}

const openKernel = async (bytes, kernel) => {
  const module = await compileVerified(bytes, kernel.sha256);
  return async (call) => runTraining(module, call);
};

const { cases } = JSON.parse(readFileSync(0, "utf8"));
const out = [];
for (const item of cases) {
  const server = site(item);
  const http = new Http({ origin: ORIGIN, token: TOKEN, fetch: server.fetch });
  const { code, message } = await runRound(item.invite, {
    http,
    openKernel,
    deadline: Number.MAX_SAFE_INTEGER,
    clock: () => 0,
    capabilities: { simd: true, memoryMb: 4096 },
    sleep: async () => {},
    loadLocalData: async () => {
      throw new Error("no local-data module in this test");
    },
  });
  out.push({
    code,
    message,
    body_b64: server.body().toString("base64"),
    log: server.log,
    chunk_headers: server.chunkHeaders,
  });
}
process.stdout.write(JSON.stringify(out));
