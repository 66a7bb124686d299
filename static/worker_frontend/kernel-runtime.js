// Kernel ABI v1 host: verify, compile and run a CCGSC kernel. No DOM, no network, so the same
// code runs in the page's Web Workers and in Node (unit tests). Contract: docs/kernel-abi.md.
import { sha256Hex } from "./protocol.js";

export const ABI_VERSION = 1;
export const MAX_MODULE_BYTES = 4 * 1024 * 1024;
export const MAX_OUTPUT_BYTES = 4 * 1024 * 1024;

const REQUIRED_FUNCTIONS = ["ccgsc_abi_version", "ccgsc_input", "ccgsc_run", "ccgsc_output"];

/** A task failure with a protocol error code (`kernel_failed`, `kernel_rejected`, `hash_mismatch`). */
export class KernelError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "KernelError";
    this.code = code;
  }
}

/**
 * Check the SHA-256 of module bytes against the expected hex, then compile them.
 * Nothing is compiled when the hash differs.
 */
export async function compileVerified(bytes, expectedSha256) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const actual = await sha256Hex(data);
  if (actual !== expectedSha256) {
    throw new KernelError("hash_mismatch", `kernel sha256 is ${actual}, expected ${expectedSha256}`);
  }
  return compileKernel(data);
}

/** Compile and check the module's shape (no imports, the four functions and a memory). */
export async function compileKernel(bytes) {
  if (bytes.byteLength > MAX_MODULE_BYTES) {
    throw new KernelError("kernel_rejected", `module is ${bytes.byteLength} bytes; the limit is ${MAX_MODULE_BYTES}`);
  }
  let module;
  try {
    module = await WebAssembly.compile(bytes);
  } catch (err) {
    throw new KernelError("kernel_rejected", `compile: ${err?.message ?? err}`);
  }
  checkShape(module);
  return module;
}

function checkShape(module) {
  if (WebAssembly.Module.imports(module).length > 0) {
    throw new KernelError("kernel_rejected", "kernel modules may not have imports");
  }
  const exports = new Map(WebAssembly.Module.exports(module).map((e) => [e.name, e.kind]));
  if (exports.get("memory") !== "memory") throw new KernelError("kernel_rejected", "missing memory export");
  for (const name of REQUIRED_FUNCTIONS) {
    if (exports.get(name) !== "function") throw new KernelError("kernel_rejected", `missing export ${name}`);
  }
}

/**
 * Run one task: a fresh instance per call (so nothing leaks between tasks and a failed instance
 * is never reused). Returns a copy of the output bytes. Throws KernelError.
 */
export function runKernel(module, input) {
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  let instance;
  try {
    instance = new WebAssembly.Instance(module, {});
  } catch (err) {
    throw new KernelError("kernel_failed", `instantiate: ${err?.message ?? err}`);
  }
  const k = instance.exports;
  try {
    const version = k.ccgsc_abi_version();
    if (version !== ABI_VERSION) throw new KernelError("kernel_rejected", `unsupported ABI version ${version}`);
    const ptr = k.ccgsc_input(bytes.length) >>> 0;
    if (ptr === 0) throw new KernelError("kernel_failed", "ccgsc_input refused the input length");
    if (ptr + bytes.length > k.memory.buffer.byteLength) {
      throw new KernelError("kernel_failed", "ccgsc_input returned a buffer outside memory");
    }
    new Uint8Array(k.memory.buffer, ptr, bytes.length).set(bytes);
    const n = k.ccgsc_run(bytes.length);
    if (n < 0) {
      const what = n === -1 ? " (bad input)" : n === -2 ? " (output too large)" : "";
      throw new KernelError("kernel_failed", `ccgsc_run returned ${n}${what}`);
    }
    if (n === 0) return new Uint8Array(0);
    if (n > MAX_OUTPUT_BYTES) throw new KernelError("kernel_failed", `output of ${n} bytes exceeds the limit`);
    const out = k.ccgsc_output() >>> 0;
    const memory = k.memory.buffer; // read after the run: memory may have grown
    if (out + n > memory.byteLength) throw new KernelError("kernel_failed", "output is outside memory");
    return new Uint8Array(memory, out, n).slice();
  } catch (err) {
    if (err instanceof KernelError) throw err;
    throw new KernelError("kernel_failed", `trap: ${err?.message ?? err}`);
  }
}

/** Convenience for tests and tools: verify, compile and run in one call. */
export async function runKernelBytes(wasmBytes, expectedSha256, input) {
  const module = await compileVerified(wasmBytes, expectedSha256);
  return runKernel(module, input);
}

// A minimal module using one SIMD128 instruction; `WebAssembly.validate` says whether the engine
// supports fixed-width SIMD (reported to the server as a capability).
const SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // type: () -> v128
  0x03, 0x02, 0x01, 0x00, // func 0 of type 0
  0x0a, 0x0a, 0x01, 0x08, 0x00, 0x41, 0x00, 0xfd, 0x0f, 0xfd, 0x62, 0x0b, // i32.const 0; i8x16.splat; i8x16.popcnt
]);

export function simdSupported() {
  try {
    return WebAssembly.validate(SIMD_PROBE);
  } catch {
    return false;
  }
}
