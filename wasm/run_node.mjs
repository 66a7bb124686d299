// Runs an ABI v1, v2 or v3 kernel in Node:
//   node run_node.mjs [--digest] KERNEL.wasm INPUT [INPUT ...]
// where an INPUT is hex bytes, or @FILE for the bytes of a file (v2 inputs are large). Prints
// one line per input: the output bytes as hex (their sha256 with --digest), or `error <code>`
// for a negative return. One instance runs every input, as the Python host's runner does.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

const args = process.argv.slice(2);
const digest = args[0] === "--digest";
const [path, ...inputs] = digest ? args.slice(1) : args;
if (!path || inputs.length === 0) {
  console.error("usage: node run_node.mjs [--digest] KERNEL.wasm INPUT [INPUT ...]");
  process.exit(2);
}

const { instance } = await WebAssembly.instantiate(readFileSync(path), {});
const k = instance.exports;
if (![1, 2, 3].includes(k.ccgsc_abi_version())) {
  console.error(`unsupported ABI version ${k.ccgsc_abi_version()}`);
  process.exit(1);
}

for (const arg of inputs) {
  const input = arg.startsWith("@") ? readFileSync(arg.slice(1)) : Buffer.from(arg, "hex");
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
  console.log(digest ? createHash("sha256").update(out).digest("hex") : Buffer.from(out).toString("hex"));
}
