// Times the worker page's CSV parser (static/worker_frontend/local-data.js) in Node on a
// generated file shaped like a contributor's export: `node bench/local_data_node.mjs [rows]
// [features]` (default 50,000 × 64, about 20 MB). One warm-up parse, then three timed; prints
// JSON {rows, features, megabytes, seconds: [...], rows_per_second, megabytes_per_second} for the
// best run. Run it on its own (not in a loop): the machine is shared.
import { performance } from "node:perf_hooks";

import { parseCsv } from "../static/worker_frontend/local-data.js";

const rows = Number(process.argv[2] || 50_000);
const features = Number(process.argv[3] || 64);
const header = [...Array.from({ length: features }, (_, i) => `f${i}`), "label"].join(",");
const lines = [header];
let state = 12345;
for (let r = 0; r < rows; r += 1) {
  const cells = [];
  for (let c = 0; c < features; c += 1) {
    state = (state * 1103515245 + 12345) >>> 0;
    cells.push((state / 2 ** 32).toFixed(6));
  }
  cells.push(String(r % 10));
  lines.push(cells.join(","));
}
const text = lines.join("\n");
const schema = { format: "csv", features, classes: 10, label_column: "label" };
parseCsv(text, schema);
const seconds = [];
for (let i = 0; i < 3; i += 1) {
  const start = performance.now();
  const parsed = parseCsv(text, schema);
  seconds.push((performance.now() - start) / 1000);
  if (parsed.n !== rows) throw new Error("wrong row count");
}
const best = Math.min(...seconds);
const megabytes = text.length / 1e6;
console.log(JSON.stringify({ rows, features, megabytes: +megabytes.toFixed(1), seconds: seconds.map((s) => +s.toFixed(3)), rows_per_second: Math.round(rows / best), megabytes_per_second: +(megabytes / best).toFixed(1) }));
