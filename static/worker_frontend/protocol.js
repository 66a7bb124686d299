// CCGSC worker protocol v1, browser side: pure functions and small classes, no DOM, no network.
// Everything here is importable from the page, from a Web Worker and from Node (unit tests).
// The contract is docs/protocol.md (messages, binary result frame) and docs/kernel-abi.md (input).

import { DEFINITION } from "./protocol-defs.js";
import { checkSchema } from "./protocol-schema.js";

export { DEFINITION, checkSchema };

const LIMITS = DEFINITION.limits;
const closeCode = (name) => Number(Object.keys(DEFINITION.close_codes).find((code) => DEFINITION.close_codes[code].name === name));

export const PROTOCOL_VERSION = DEFINITION.version;
export const CLIENT_KIND = "browser";
export const CLIENT_VERSION = "1.0.0";

export const MAX_JSON_BYTES = LIMITS.max_json_bytes;
export const MAX_RESULT_BYTES = LIMITS.max_result_bytes;
export const MAX_RESULT_HEADER_BYTES = LIMITS.max_result_header_bytes;
export const MAX_SLOTS = LIMITS.max_slots;
export const MAX_PARAMS = LIMITS.max_params;
const MAX_ELAPSED_MS = LIMITS.max_elapsed_ms;
const MAX_ERROR_MESSAGE = LIMITS.max_error_message_chars;
export const ABI_HEADER_BYTES = 32;
export const U64_MAX = (1n << 64n) - 1n;

export const CLOSE = Object.freeze({
  UNAUTHORIZED: closeCode("unauthorized"),
  PROTOCOL_VERSION: closeCode("protocol_version"),
  HELLO_TIMEOUT: closeCode("hello_timeout"),
  NOT_FOUND: closeCode("not_found"),
  RATE_LIMITED: closeCode("rate_limited"),
  TOO_LARGE: closeCode("too_large"),
});

export const ERROR_CODES = Object.freeze(Object.keys(DEFINITION.error_codes.task));
const DECLINED_SCHEMA = DEFINITION.routes.worker.inbound.round_declined;
/** Why a worker declines an FL round (`round_declined`); `paused` comes from the session. */
export const DECLINE_REASONS = Object.freeze([...DECLINED_SCHEMA.properties.reason.enum]);
const MAX_DECLINE_MESSAGE = DECLINED_SCHEMA.properties.message.maxLength;

/** Server → worker message schemas, by type. */
export const SERVER_SCHEMAS = DEFINITION.routes.worker.outbound;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
const U64_RE = /^[0-9]{1,20}$/;

/** A message from the server that does not follow the protocol. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = "ProtocolError";
  }
}

export function isUuid(value) {
  return typeof value === "string" && UUID_RE.test(value);
}

export function isSha256Hex(value) {
  return typeof value === "string" && SHA256_RE.test(value);
}

function clampInt(value, lo, hi) {
  const n = Math.trunc(Number(value));
  if (!Number.isFinite(n)) return lo;
  return Math.min(hi, Math.max(lo, n));
}

function truncate(text, max) {
  const s = String(text ?? "");
  return s.length > max ? s.slice(0, max - 1) + "…" : s;
}

// ---------------------------------------------------------------------------------------------
// Client → server messages. Each builder returns a plain object shaped exactly like the server's
// schema (no unknown fields, values clamped into range), ready for JSON.stringify.

/**
 * `hello`: the first message. `capabilities` keys that are undefined or of the wrong type are
 * left out (they are optional except `cores`). `resume` is kept only if it looks like a worker id.
 */
export function helloMessage({ token, userAgent = "", capabilities = {}, slots, resume = null }) {
  const caps = { cores: clampInt(capabilities.cores ?? 1, 1, 1024) };
  if (Number.isFinite(capabilities.memory_mb)) caps.memory_mb = clampInt(capabilities.memory_mb, 0, 16_777_216);
  for (const key of ["simd", "battery_powered", "metered"]) {
    if (typeof capabilities[key] === "boolean") caps[key] = capabilities[key];
  }
  const client = { kind: CLIENT_KIND, version: CLIENT_VERSION };
  const agent = String(userAgent ?? "").replace(/[\u0000-\u001f\u007f]/g, "");
  if (agent) client.user_agent = truncate(agent, 300);
  return {
    v: PROTOCOL_VERSION,
    type: "hello",
    token: String(token),
    client,
    capabilities: caps,
    slots: clampInt(slots, 0, MAX_SLOTS),
    resume: isUuid(resume) ? resume : null,
  };
}

/** `capacity`: change how many tasks run at once (0 = paused). */
export function capacityMessage(slots) {
  return { v: PROTOCOL_VERSION, type: "capacity", slots: clampInt(slots, 0, MAX_SLOTS) };
}

/** `progress`: heartbeat for one assignment; `fraction` is optional and clamped to [0, 1]. */
export function progressMessage(assignment, fraction) {
  const msg = { v: PROTOCOL_VERSION, type: "progress", assignment };
  if (typeof fraction === "number" && Number.isFinite(fraction)) {
    msg.fraction = Math.min(1, Math.max(0, fraction));
  }
  return msg;
}

/** `error`: the task failed on this worker. Unknown codes become `internal`. */
export function errorMessage(assignment, code, message = "") {
  const msg = {
    v: PROTOCOL_VERSION,
    type: "error",
    assignment,
    code: ERROR_CODES.includes(code) ? code : "internal",
  };
  if (message) msg.message = truncate(String(message).replaceAll("\u0000", ""), MAX_ERROR_MESSAGE);
  return msg;
}

/**
 * `round_declined`: this worker will not train the round it was invited to. Unknown reasons
 * become `unsupported`; the message loses control characters and is cut to its limit (the
 * same as the edge worker's builder, so both sessions send the same bytes).
 */
export function roundDeclinedMessage(participation, reason, message = "") {
  return {
    v: PROTOCOL_VERSION,
    type: "round_declined",
    participation,
    reason: DECLINE_REASONS.includes(reason) ? reason : "unsupported",
    message: String(message ?? "").replace(/[\u0000-\u001f\u007f]/g, "").slice(0, MAX_DECLINE_MESSAGE),
  };
}

export function pingMessage() {
  return { v: PROTOCOL_VERSION, type: "ping" };
}

// ---------------------------------------------------------------------------------------------
// Binary result frame: u32 big-endian header length, UTF-8 JSON header, raw output bytes.

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** The JSON header of a result frame, fields in the documented order. */
export function resultHeader({ assignment, sha256, elapsedMs }) {
  const header = { v: PROTOCOL_VERSION, type: "result", assignment, sha256 };
  if (elapsedMs !== undefined && elapsedMs !== null) {
    header.elapsed_ms = clampInt(Math.round(Number(elapsedMs) || 0), 0, MAX_ELAPSED_MS);
  }
  return header;
}

/** Build the binary frame for one result. `output` is a Uint8Array or ArrayBuffer. */
export function encodeResultFrame({ assignment, sha256, elapsedMs }, output) {
  if (!isUuid(assignment)) throw new RangeError("assignment must be a lowercase UUID");
  if (!isSha256Hex(sha256)) throw new RangeError("sha256 must be 64 lowercase hex digits");
  const body = output instanceof Uint8Array ? output : new Uint8Array(output ?? new ArrayBuffer(0));
  if (body.length > MAX_RESULT_BYTES) {
    throw new RangeError(`result output is ${body.length} bytes; the limit is ${MAX_RESULT_BYTES}`);
  }
  const header = encoder.encode(JSON.stringify(resultHeader({ assignment, sha256, elapsedMs })));
  if (header.length > MAX_RESULT_HEADER_BYTES) throw new RangeError("result header too large");
  const frame = new Uint8Array(4 + header.length + body.length);
  new DataView(frame.buffer).setUint32(0, header.length, false);
  frame.set(header, 4);
  frame.set(body, 4 + header.length);
  return frame;
}

/** Split a result frame back into `{header, output}` (used by tests and the outbox). */
export function decodeResultFrame(frame) {
  const bytes = frame instanceof Uint8Array ? frame : new Uint8Array(frame);
  if (bytes.length < 4) throw new ProtocolError("frame shorter than its length prefix");
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, false);
  if (headerLength < 2 || 4 + headerLength > bytes.length) throw new ProtocolError("bad header length");
  const header = JSON.parse(decoder.decode(bytes.subarray(4, 4 + headerLength)));
  return { header, output: bytes.slice(4 + headerLength) };
}

// ---------------------------------------------------------------------------------------------
// Server → client messages.

/**
 * Parse a text frame from the server and check it against its schema in the protocol definition
 * (unknown fields are allowed: a server may add optional fields within a version).
 */
export function parseServerMessage(text) {
  if (typeof text !== "string" || text.length > MAX_JSON_BYTES) throw new ProtocolError("server message is not a text frame within the size limit");
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    throw new ProtocolError("server message is not JSON");
  }
  if (!message || typeof message !== "object" || Array.isArray(message)) {
    throw new ProtocolError("server message is not an object");
  }
  if (typeof message.type !== "string") throw new ProtocolError("server message has no type");
  if (message.v !== PROTOCOL_VERSION) throw new ProtocolError(`unsupported protocol version ${message.v}`);
  if (!Object.hasOwn(SERVER_SCHEMAS, message.type)) throw new ProtocolError(`unknown message type ${message.type}`);
  const problem = checkSchema(SERVER_SCHEMAS[message.type], message);
  if (problem) throw new ProtocolError(`${message.type}: ${problem}`);
  return message;
}

/** A u64 sent as a decimal string (or a safe integer) → BigInt, exactly. */
export function parseU64(value, name = "value") {
  let big;
  if (typeof value === "string" && U64_RE.test(value)) big = BigInt(value);
  else if (typeof value === "bigint") big = value;
  else if (typeof value === "number" && Number.isSafeInteger(value)) big = BigInt(value);
  else throw new ProtocolError(`${name} must be a u64 decimal string`);
  if (big < 0n || big > U64_MAX) throw new ProtocolError(`${name} is outside the u64 range`);
  return big;
}

/**
 * Check an `assign` message and convert it: `lo`, `hi` and `seed` become BigInt, `params` plain
 * numbers. Throws ProtocolError when anything needed to run the task is missing or malformed.
 */
export function decodeAssign(message) {
  if (!message || message.type !== "assign") throw new ProtocolError("not an assign message");
  const { assignment, kernel, input } = message;
  if (!isUuid(assignment)) throw new ProtocolError("assign: bad assignment id");
  if (!kernel || typeof kernel !== "object") throw new ProtocolError("assign: missing kernel");
  if (!isSha256Hex(kernel.sha256)) throw new ProtocolError("assign: bad kernel sha256");
  if (typeof kernel.url !== "string" || !kernel.url) throw new ProtocolError("assign: missing kernel url");
  if (!input || typeof input !== "object") throw new ProtocolError("assign: missing input");
  const lo = parseU64(input.lo, "lo");
  const hi = parseU64(input.hi, "hi");
  const seed = parseU64(input.seed ?? "0", "seed");
  if (lo > hi) throw new ProtocolError("assign: lo > hi");
  const rawParams = input.params ?? [];
  if (!Array.isArray(rawParams) || rawParams.length > MAX_PARAMS) throw new ProtocolError("assign: bad params");
  const params = rawParams.map((p) => {
    if (typeof p !== "number" || !Number.isFinite(p)) throw new ProtocolError("assign: params must be finite numbers");
    return p;
  });
  return {
    assignment,
    job: typeof message.job === "string" ? message.job : null,
    task: Number.isInteger(message.task) ? message.task : null,
    kernel: {
      name: typeof kernel.name === "string" ? kernel.name : "kernel",
      version: typeof kernel.version === "string" ? kernel.version : "",
      sha256: kernel.sha256,
      url: kernel.url,
    },
    input: { lo, hi, seed, params },
    leaseMs: Number.isFinite(message.lease_ms) && message.lease_ms > 0 ? message.lease_ms : 60_000,
    workUnits: Number.isFinite(message.work_units) ? message.work_units : null,
  };
}

/**
 * Resolve a kernel URL against the page and refuse anything that is not same-origin http(s):
 * the worker token travels in the request, so it must never go to another site.
 */
export function resolveKernelUrl(url, base) {
  const baseUrl = new URL(base);
  const resolved = new URL(url, baseUrl);
  if (resolved.origin !== baseUrl.origin || !/^https?:$/.test(resolved.protocol)) {
    throw new ProtocolError("kernel url is not on this site");
  }
  return resolved.href;
}

/** The worker WebSocket URL for a page: same host, wss on https pages, ws otherwise. */
export function websocketUrl(path, location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path.startsWith("/") ? path : "/" + path}`;
}

// ---------------------------------------------------------------------------------------------
// Kernel ABI v1 input: LE u64 lo, u64 hi, u64 seed, u32 n_params, u32 0, f64 params[n].

export function encodeInput(lo, hi, seed, params = []) {
  const l = parseU64(lo, "lo");
  const h = parseU64(hi, "hi");
  const s = parseU64(seed, "seed");
  if (l > h) throw new RangeError("lo must be <= hi");
  if (params.length > MAX_PARAMS) throw new RangeError(`at most ${MAX_PARAMS} params`);
  const bytes = new Uint8Array(ABI_HEADER_BYTES + 8 * params.length);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, l, true);
  view.setBigUint64(8, h, true);
  view.setBigUint64(16, s, true);
  view.setUint32(24, params.length, true);
  view.setUint32(28, 0, true);
  params.forEach((p, i) => view.setFloat64(ABI_HEADER_BYTES + 8 * i, Number(p), true));
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// Bytes helpers.

export function bytesToHex(bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let out = "";
  for (let i = 0; i < b.length; i++) out += b[i].toString(16).padStart(2, "0");
  return out;
}

export function hexToBytes(hex) {
  if (hex.length % 2 || /[^0-9a-fA-F]/.test(hex)) throw new RangeError("not a hex string");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** SHA-256 of some bytes as lowercase hex (Web Crypto; needs a secure context in browsers). */
export async function sha256Hex(bytes, subtle = globalThis.crypto?.subtle) {
  if (!subtle) throw new Error("Web Crypto is unavailable (the page must be served over HTTPS)");
  return bytesToHex(new Uint8Array(await subtle.digest("SHA-256", bytes)));
}

export function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function base64ToBytes(text) {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reconnect back-off: 0.5 s doubling up to 30 s, "equal jitter" (a random point in the upper
// half of the window), so reconnecting workers spread out but never retry instantly.

export const BACKOFF_BASE_MS = 500;
export const BACKOFF_MAX_MS = 30_000;

/** The window for retry number `attempt` (0-based): min(max, base · 2^attempt). */
export function backoffCeiling(attempt, { baseMs = BACKOFF_BASE_MS, maxMs = BACKOFF_MAX_MS } = {}) {
  const n = Math.max(0, Math.floor(attempt));
  return n >= 30 ? maxMs : Math.min(maxMs, baseMs * 2 ** n);
}

/** A delay in [ceiling/2, ceiling] for retry number `attempt`. `random` returns [0, 1). */
export function backoffDelay(attempt, { baseMs, maxMs, random = Math.random } = {}) {
  const ceiling = backoffCeiling(attempt, { baseMs, maxMs });
  const r = Math.min(1, Math.max(0, random()));
  return Math.round(ceiling / 2 + (ceiling / 2) * r);
}

export class Backoff {
  constructor({ baseMs = BACKOFF_BASE_MS, maxMs = BACKOFF_MAX_MS, random = Math.random } = {}) {
    this.options = { baseMs, maxMs, random };
    this.attempt = 0;
  }

  /** The delay before the next retry; each call doubles the window up to the maximum. */
  next() {
    const delay = backoffDelay(this.attempt, this.options);
    this.attempt += 1;
    return delay;
  }

  /** Call after a successful `welcome`. */
  reset() {
    this.attempt = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Token bucket: keeps the page under the server's message rate (50/s, burst 100) with margin.

export class TokenBucket {
  constructor({ rate = 40, burst = 80, now = () => Date.now() } = {}) {
    this.rate = rate; // tokens per second
    this.burst = burst;
    this.now = now;
    this.tokens = burst;
    this.updated = now();
  }

  refill() {
    const t = this.now();
    const elapsed = Math.max(0, t - this.updated);
    this.tokens = Math.min(this.burst, this.tokens + (elapsed * this.rate) / 1000);
    this.updated = t;
  }

  /** Take `n` tokens if available. */
  tryTake(n = 1) {
    this.refill();
    if (this.tokens + 1e-9 >= n) {
      this.tokens -= n;
      return true;
    }
    return false;
  }

  /** Milliseconds until `n` tokens are available (0 if now). */
  waitMs(n = 1) {
    this.refill();
    return this.tokens >= n ? 0 : Math.ceil(((n - this.tokens) * 1000) / this.rate);
  }
}

// ---------------------------------------------------------------------------------------------
// Small pure helpers the page uses; here so they are tested.

/** Default number of cores to lend: all but one, at least one. */
export function defaultCores(hardwareConcurrency) {
  const cores = clampInt(hardwareConcurrency || 1, 1, MAX_SLOTS);
  return Math.max(1, cores - 1);
}

/** Whether a connection looks metered (Network Information API fields, where present). */
export function isMetered(connection) {
  if (!connection) return false;
  return connection.saveData === true || connection.type === "cellular";
}

/** Human text for a close code that stops the worker, or null when it should reconnect. */
export function fatalCloseReason(code) {
  if (code === CLOSE.UNAUTHORIZED) return "Your worker token was revoked — reload the page to get a new one.";
  if (code === CLOSE.PROTOCOL_VERSION) return "Please reload the page: the server was updated.";
  return null;
}
