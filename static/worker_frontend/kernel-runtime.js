// Kernel ABI v1, v2 and v3 host: verify, compile and run a CCGSC kernel; encode and decode v2
// (training) calls (v3, analytics, is encoded by analytics-round.js). No DOM, no network, so the same code runs in the page's Web Workers and in
// Node (unit tests). Contract: docs/kernel-abi.md.
import { sha256Hex } from "./protocol.js";

export const ABI_VERSION = 1;
export const ABI_VERSION_V2 = 2;
export const ABI_VERSION_V3 = 3;
export const MAX_MODULE_BYTES = 4 * 1024 * 1024;
export const MAX_OUTPUT_BYTES = 4 * 1024 * 1024;
const MIB = 1024 * 1024;
const PAGE_BYTES = 65536;

// Per-kind ceilings (the same as ccgsc_worker.abi.KIND_LIMITS); a kernel's manifest entry may
// declare lower ones, passed to runKernel as `limits`.
export const KIND_LIMITS = Object.freeze({
  fc: Object.freeze({ inputBytes: 32 + 8 * 4096, outputBytes: MAX_OUTPUT_BYTES, memoryBytes: 64 * MIB }),
  train: Object.freeze({ inputBytes: 256 * MIB, outputBytes: 64 * MIB, memoryBytes: 512 * MIB }),
  analytics: Object.freeze({ inputBytes: 256 * MIB, outputBytes: 2 * MIB, memoryBytes: 512 * MIB }),
});
const KIND_OF_VERSION = { [ABI_VERSION]: "fc", [ABI_VERSION_V2]: "train", [ABI_VERSION_V3]: "analytics" };
const moduleMemory = new WeakMap(); // WebAssembly.Module -> declared maximum memory pages

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
  moduleMemory.set(module, declaredMaximumPages(bytes));
  return module;
}

function readLeb(bytes, pos) {
  let result = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[pos.i++];
    if (byte === undefined) throw new KernelError("kernel_rejected", "truncated module");
    result += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if (!(byte & 0x80)) return result;
  }
}

/**
 * The maximum pages the module's memory section declares (null if none). The JS API does not
 * reflect memory limits, so the host reads them from the binary to enforce the kind's limit.
 */
export function declaredMaximumPages(bytes) {
  const pos = { i: 8 };
  while (pos.i < bytes.length) {
    const id = bytes[pos.i++];
    const size = readLeb(bytes, pos);
    const end = pos.i + size;
    if (id === 5) {
      if (readLeb(bytes, pos) < 1) return null;
      const flags = readLeb(bytes, pos);
      readLeb(bytes, pos); // minimum
      return flags & 1 ? readLeb(bytes, pos) : null;
    }
    pos.i = end;
  }
  return null;
}

/** The limits for a module of ABI `version`: the kind's ceiling, lowered by `declared`. */
export function limitsFor(version, declared = undefined) {
  const kind = KIND_OF_VERSION[version];
  if (!kind) throw new KernelError("kernel_rejected", `unsupported ABI version ${version}`);
  const ceiling = KIND_LIMITS[kind];
  const out = {};
  for (const field of ["inputBytes", "outputBytes", "memoryBytes"]) {
    const value = declared?.[field] ?? ceiling[field];
    if (!(value > 0 && value <= ceiling[field])) {
      throw new KernelError("kernel_rejected", `${field} ${value} is outside the ${kind} kind's limit`);
    }
    out[field] = value;
  }
  return out;
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
 * Run one task (v1), one training call (v2) or one analytics summary (v3): a fresh instance per call (so nothing leaks
 * between tasks and a failed instance is never reused). `limits` ({inputBytes, outputBytes,
 * memoryBytes}, from the kernel's manifest entry) lower the kind's ceilings. Returns a copy of
 * the output bytes. Throws KernelError.
 */
export function runKernel(module, input, limits = undefined) {
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
    const limit = limitsFor(version, limits);
    const maxPages = moduleMemory.get(module);
    if (maxPages === null || maxPages === undefined || maxPages * PAGE_BYTES > limit.memoryBytes) {
      throw new KernelError("kernel_rejected", `declared memory of ${maxPages} pages exceeds ${limit.memoryBytes} bytes`);
    }
    if (bytes.length > limit.inputBytes) {
      throw new KernelError("kernel_failed", `input of ${bytes.length} bytes exceeds ${limit.inputBytes}`);
    }
    const ptr = k.ccgsc_input(bytes.length) >>> 0;
    if (ptr === 0) throw new KernelError("kernel_failed", "ccgsc_input refused the input length");
    if (ptr + bytes.length > k.memory.buffer.byteLength) {
      throw new KernelError("kernel_failed", "ccgsc_input returned a buffer outside memory");
    }
    new Uint8Array(k.memory.buffer, ptr, bytes.length).set(bytes);
    const n = k.ccgsc_run(bytes.length);
    if (n < 0) {
      const what = { "-1": " (bad input)", "-2": " (output too large)", "-3": " (out of memory)" }[n] ?? "";
      throw new KernelError("kernel_failed", `ccgsc_run returned ${n}${what}`);
    }
    if (n === 0) return new Uint8Array(0);
    if (n > limit.outputBytes) throw new KernelError("kernel_failed", `output of ${n} bytes exceeds the limit`);
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
export async function runKernelBytes(wasmBytes, expectedSha256, input, limits = undefined) {
  const module = await compileVerified(wasmBytes, expectedSha256);
  return runKernel(module, input, limits);
}

// ---- ABI v2: training calls ------------------------------------------------------------------

export const OP_TRAIN = 1;
export const OP_EVAL = 2;
export const FLAG_X_U8 = 1;
export const FLAG_CONTROL = 2;
export const FLAG_MOMENTUM_IN = 4;
export const FLAG_MOMENTUM_OUT = 8;
export const STATUS_OK = 0;
export const STATUS_NON_FINITE_RESULT = 1;
export const STATUS_NON_FINITE_INPUT = 2;
const V2_HEADER_BYTES = 96;
const V2_METRICS_BYTES = 32;
const align16 = (n) => (n + 15) & ~15;

/** The cnn kernel's fixed architecture: sizes [784, 10], pass `nParams: CNN_PARAM_COUNT`. */
export const CNN_PARAM_COUNT = 1663370;

/** Parameters of a dense stack over `sizes` (sum of in*out + out). */
export function denseParamCount(sizes) {
  let d = 0;
  for (let i = 1; i < sizes.length; i++) d += sizes[i - 1] * sizes[i] + sizes[i];
  return d;
}

function asBytes(values, count, name) {
  if (!(values instanceof Float32Array) || values.length !== count) {
    throw new TypeError(`${name} must be a Float32Array of ${count} values`);
  }
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
}

/**
 * Encode one v2 call (docs/kernel-abi.md): a 96-byte header, then weights, [control],
 * [momentum], X (Float32Array, or Uint8Array scaled by 1/255 in the kernel) and Y (labels),
 * each section 16-byte aligned. Returns a Uint8Array.
 */
export function encodeTrainInput({
  op, sizes, weights, x, y, batchSize, seed = 0n, learningRate = 0, momentum = 0, proxMu = 0,
  control = null, momentumBuffer = null, returnMomentum = false, nParams = undefined,
}) {
  const opCode = { train: OP_TRAIN, eval: OP_EVAL }[op];
  if (!opCode) throw new TypeError("op must be train or eval");
  if (sizes.length < 2 || sizes.length > 8) throw new TypeError("sizes must have 2 to 8 entries");
  const d = nParams ?? denseParamCount(sizes);
  const n = y.length;
  let flags = 0;
  const sections = [asBytes(weights, d, "weights")];
  if (control) {
    flags |= FLAG_CONTROL;
    sections.push(asBytes(control, d, "control"));
  }
  if (momentumBuffer) {
    flags |= FLAG_MOMENTUM_IN;
    sections.push(asBytes(momentumBuffer, d, "momentumBuffer"));
  }
  if (returnMomentum) flags |= FLAG_MOMENTUM_OUT;
  if (x instanceof Uint8Array) {
    if (x.length !== n * sizes[0]) throw new TypeError(`x must have ${n * sizes[0]} values`);
    flags |= FLAG_X_U8;
    sections.push(x);
  } else {
    sections.push(asBytes(x, n * sizes[0], "x"));
  }
  const labels = new Uint32Array(n);
  for (let i = 0; i < n; i++) labels[i] = y[i];
  sections.push(new Uint8Array(labels.buffer));
  const total = sections.reduce((sum, s) => sum + align16(s.length), V2_HEADER_BYTES);
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  view.setUint32(0, ABI_VERSION_V2, true);
  view.setUint32(4, opCode, true);
  view.setUint32(8, flags, true);
  view.setUint32(12, sizes.length, true);
  sizes.forEach((size, i) => view.setUint32(16 + 4 * i, size, true));
  view.setUint32(48, n, true);
  view.setUint32(52, batchSize, true);
  view.setUint32(56, d, true);
  view.setBigUint64(64, BigInt(seed), true);
  view.setFloat32(72, learningRate, true);
  view.setFloat32(76, momentum, true);
  view.setFloat32(80, proxMu, true);
  let offset = V2_HEADER_BYTES;
  for (const section of sections) {
    out.set(section, offset);
    offset += align16(section.length);
  }
  return out;
}

/**
 * Decode a v2 output: {status, ok, samples, lossSum, correct, updateL2, update, momentum}
 * with `update`/`momentum` as Float32Array (null on an error status or for eval).
 */
export function decodeTrainOutput(bytes, { expectMomentum = false } = {}) {
  if (bytes.length < V2_METRICS_BYTES) throw new KernelError("kernel_failed", "v2 output shorter than its metrics");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const status = view.getUint32(0, true);
  const d = view.getUint32(20, true);
  const result = {
    status,
    ok: status === STATUS_OK,
    samples: view.getUint32(4, true),
    lossSum: view.getFloat64(8, true),
    correct: view.getUint32(16, true),
    updateL2: view.getFloat64(24, true),
    update: null,
    momentum: null,
  };
  const body = bytes.length - V2_METRICS_BYTES;
  const expected = status === STATUS_OK ? 4 * d * (expectMomentum && d ? 2 : 1) : 0;
  if (status > STATUS_NON_FINITE_INPUT || body !== expected) {
    throw new KernelError("kernel_failed", `malformed v2 output (status ${status}, ${body} bytes)`);
  }
  const copy = bytes.slice(V2_METRICS_BYTES); // aligned, owned copy
  if (d && status === STATUS_OK) {
    result.update = new Float32Array(copy.buffer, 0, d);
    if (expectMomentum) result.momentum = new Float32Array(copy.buffer, 4 * d, d);
  }
  return result;
}

/** Run one v2 call and decode it. */
export function runTraining(module, call, limits = undefined) {
  const input = encodeTrainInput(call);
  return decodeTrainOutput(runKernel(module, input, limits), { expectMomentum: Boolean(call.returnMomentum) });
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
