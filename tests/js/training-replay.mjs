// Runs whole FL rounds through the page's training.js against an in-memory site, and prints what
// each uploaded. Used by tests/edge_worker/test_training_js_parity.py, which computes the same
// rounds with the edge worker's train_update and expects identical bytes. Not a test on its own.
//   stdin:  {"cases": [{"invite": {...}, "files": {"/path": "<file on disk>"}, "drop": [i],
//                       "corrupt": [i]}]}
//   stdout: [{"code", "message", "body_b64", "log": ["METHOD path", ...], "chunk_headers": [..]}]
import { readFileSync } from "node:fs";

import { compileVerified, runTraining } from "../../static/worker_frontend/kernel-runtime.js";
import { Http, runRound } from "../../static/worker_frontend/training.js";
import { ORIGIN, TOKEN, site } from "./replay-site.mjs";

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
