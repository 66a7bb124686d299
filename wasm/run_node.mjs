// Runs an ABI v1 kernel in Node: `node run_node.mjs KERNEL.wasm HEX_INPUT [HEX_INPUT ...]`.
// Prints one line per input: the output bytes as hex, or `error <code>` for a negative return.
import { readFileSync } from "node:fs";

const [path, ...inputs] = process.argv.slice(2);
if (!path || inputs.length === 0) {
  console.error("usage: node run_node.mjs KERNEL.wasm HEX_INPUT [HEX_INPUT ...]");
  process.exit(2);
}

const { instance } = await WebAssembly.instantiate(readFileSync(path), {});
const k = instance.exports;
if (k.ccgsc_abi_version() !== 1) {
  console.error(`unsupported ABI version ${k.ccgsc_abi_version()}`);
  process.exit(1);
}

for (const hex of inputs) {
  const input = Buffer.from(hex, "hex");
  const ptr = k.ccgsc_input(input.length);
  if (ptr === 0) {
    console.log("error input");
    continue;
  }
  new Uint8Array(k.memory.buffer, ptr, input.length).set(input);
  const rc = k.ccgsc_run(input.length);
  if (rc < 0) {
    console.log(`error ${rc}`);
    continue;
  }
  const out = rc === 0 ? new Uint8Array(0) : new Uint8Array(k.memory.buffer, k.ccgsc_output(), rc);
  console.log(Buffer.from(out).toString("hex"));
}
