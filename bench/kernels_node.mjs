// Times ABI v1 kernels in Node: `node kernels_node.mjs KERNEL.wasm < request.json`.
// The request is {"inputs": [hex, ...], "warmup": true}. Every input is one task, run with one
// ccgsc_run call. With warmup, the first input runs once untimed so the optimising tier is in
// place. Prints {"engine", "outputs": [hex], "seconds": [per task], "compile_seconds"} as JSON.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

const path = process.argv[2];
const request = JSON.parse(readFileSync(0, "utf8"));
const t0 = performance.now();
const { instance } = await WebAssembly.instantiate(readFileSync(path), {});
const compileSeconds = (performance.now() - t0) / 1000;
const k = instance.exports;

function runTask(input) {
  const ptr = k.ccgsc_input(input.length);
  if (ptr === 0) throw new Error("kernel refused the input size");
  new Uint8Array(k.memory.buffer, ptr, input.length).set(input);
  const rc = k.ccgsc_run(input.length);
  if (rc < 0) throw new Error(`kernel returned ${rc}`);
  return Buffer.from(new Uint8Array(k.memory.buffer, k.ccgsc_output(), rc)).toString("hex");
}

const inputs = request.inputs.map((hex) => Buffer.from(hex, "hex"));
if (request.warmup && inputs.length > 0) runTask(inputs[0]);
const outputs = [];
const seconds = [];
for (const input of inputs) {
  const start = performance.now();
  outputs.push(runTask(input));
  seconds.push((performance.now() - start) / 1000);
}
console.log(JSON.stringify({ engine: `node ${process.version}`, outputs, seconds, compile_seconds: compileSeconds }));
