// Runs whole analytics rounds through the page's analytics-round.js against an in-memory site and
// prints what each uploaded. A local-data case's CSV is read as the page reads a picked file
// (parseColumnsCsv), kept through LocalDataStore.save in an in-memory store, and handed to the
// round by localColumns. Used by tests/edge_worker/test_analytics_js_parity.py, which summarises
// the same rows with the edge worker and expects identical bytes. Not a test on its own.
//   stdin:  {"cases": [{"invite": {...}, "files": {"/path": "<file on disk>"}, "csv": "<file>"?,
//                       "drop": [i], "corrupt": [i]}]}
//   stdout: [{"code", "message", "body_b64", "log": [...], "missing": [per column] | null}]
import { readFileSync } from "node:fs";

import { runAnalyticsRound } from "../../static/worker_frontend/analytics-round.js";
import { compileVerified, runKernel } from "../../static/worker_frontend/kernel-runtime.js";
import { localColumns, parseColumnsCsv } from "../../static/worker_frontend/local-columns.js";
import { LocalDataStore } from "../../static/worker_frontend/local-data.js";
import { Http } from "../../static/worker_frontend/training.js";
import { ORIGIN, TOKEN, site } from "./replay-site.mjs";

/** LocalDataStore's own records, kept in a Map instead of IndexedDB. */
class MemoryStore extends LocalDataStore {
  constructor() {
    super(null);
    this.records = new Map();
  }

  async run(_mode, act) {
    const store = {
      put: (record) => {
        this.records.set(record.job, structuredClone(record));
        return { result: undefined };
      },
      get: (job) => ({ result: structuredClone(this.records.get(job)) }),
    };
    const request = act(store);
    return request ? request.result : undefined;
  }
}

const openAnalytics = async (bytes, kernel) => {
  const module = await compileVerified(bytes, kernel.sha256);
  return async (input) => runKernel(module, input);
};

const { cases } = JSON.parse(readFileSync(0, "utf8"));
const out = [];
for (const item of cases) {
  const server = site(item);
  const store = new MemoryStore();
  let missing = null;
  if (item.csv) {
    const schema = { format: "columns", columns: item.invite.analytics.columns.map((c) => c.name) };
    const parsed = parseColumnsCsv(readFileSync(item.csv, "utf8"), schema, { maxRows: item.invite.analytics.max_rows });
    missing = parsed.missing;
    await store.save({ job: item.invite.job, jobName: "replay", schema, source: { kind: "csv", name: "replay.csv" }, parsed, consent: true });
  }
  const { code, message } = await runAnalyticsRound(item.invite, {
    http: new Http({ origin: ORIGIN, token: TOKEN, fetch: server.fetch }),
    openAnalytics,
    deadline: Number.MAX_SAFE_INTEGER,
    clock: () => 0,
    sleep: async () => {},
    loadLocalColumns: async () => ({ localColumns: (job, query) => localColumns(job, query, { store }) }),
  });
  out.push({ code, message, body_b64: server.body().toString("base64"), log: server.log, missing });
}
process.stdout.write(JSON.stringify(out));
