// Times one ABI v2 training call in Node through the browser worker's own runtime
// (static/worker_frontend/kernel-runtime.js: a fresh instance per call, as in the page).
// `node training_node.mjs < request.json` with {"wasm", "limits", "runs": [{"input", "repeats"}]}
// (paths to the module and to encoded inputs). Prints JSON: per run the wall and CPU seconds of
// each repeat (after one untimed warm-up call) and the output's sha256.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

import { compileKernel, runKernel } from "../static/worker_frontend/kernel-runtime.js";

const request = JSON.parse(readFileSync(0, "utf8"));
const module = await compileKernel(readFileSync(request.wasm));
const runs = [];
for (const run of request.runs) {
  const input = new Uint8Array(readFileSync(run.input));
  const output = runKernel(module, input, request.limits);
  const seconds = [];
  const cpuSeconds = [];
  for (let r = 0; r < run.repeats; r++) {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    runKernel(module, input, request.limits);
    seconds.push((performance.now() - t0) / 1000);
    const cpu = process.cpuUsage(cpu0);
    cpuSeconds.push((cpu.user + cpu.system) / 1e6);
  }
  runs.push({ seconds, cpu_seconds: cpuSeconds, sha256: createHash("sha256").update(output).digest("hex") });
}
console.log(JSON.stringify({ engine: `node ${process.version}`, runs }));
