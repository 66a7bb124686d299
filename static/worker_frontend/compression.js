// Compressed FL uploads on the worker page: int8, top-k with error feedback, signSGD. DOM-free.
// Twin of edge_worker/ccgsc_worker/compression.py: for the same update (and seed, k, residual)
// the payload is byte-identical, so the server decodes either client the same way
// (docs/aggregation.md, "Compression"). Every payload starts with a 16-byte little-endian header:
// 2-byte magic, version 1, a reserved byte, a u32 parameter (int8: block size; top-k: k; signSGD:
// 0) and the u64 dimension. Float32 steps are rounded as numpy's float32 arithmetic rounds them.

export const HEADER_BYTES = 16;
export const INT8_BLOCK = 256;
const MAGIC = { int8: [0x51, 0x38], topk: [0x54, 0x4b], signsgd: [0x53, 0x47] }; // "Q8" "TK" "SG"

function header(scheme, parameter, dimension, bodyBytes) {
  const out = new Uint8Array(HEADER_BYTES + bodyBytes);
  const view = new DataView(out.buffer);
  out.set(MAGIC[scheme], 0);
  out[2] = 1;
  view.setUint32(4, parameter, true);
  view.setBigUint64(8, BigInt(dimension), true);
  return out;
}

/** MurmurHash3's 32-bit finaliser. */
function fmix32(x) {
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

/** int8's rounding uniform for coordinate i: (h >> 8) · 2⁻²⁴, h = fmix32(fmix32(i ⊕ s) + 0x9E3779B9). */
export function roundingUniform(seed, i) {
  const hashed = fmix32((fmix32((i ^ seed) >>> 0) + 0x9e3779b9) >>> 0);
  return (hashed >>> 8) * 2 ** -24;
}

/** int8 with one float32 scale per block and stochastic rounding from `seed` (u32). */
export function int8Payload(update, seed, blockSize = INT8_BLOCK) {
  const d = update.length;
  const blocks = Math.ceil(d / blockSize);
  const out = header("int8", blockSize, d, 4 * blocks + d);
  const scales = new DataView(out.buffer, HEADER_BYTES, 4 * blocks);
  const values = new Int8Array(out.buffer, HEADER_BYTES + 4 * blocks, d);
  const s = seed >>> 0;
  for (let b = 0; b < blocks; b++) {
    const start = b * blockSize;
    const end = Math.min(d, start + blockSize);
    let max = 0;
    for (let i = start; i < end; i++) max = Math.max(max, Math.abs(update[i]));
    const scale = Math.fround(max / 127);
    scales.setFloat32(4 * b, scale, true);
    const safe = scale > 0 ? scale : 1;
    for (let i = start; i < end; i++) {
      const q = Math.floor(Math.fround(Math.fround(update[i] / safe) + roundingUniform(s, i)));
      values[i] = Math.min(127, Math.max(-127, q));
    }
  }
  return out;
}

/** The k largest |x| (ties: the lower index) → {indices (increasing), values, rest}. */
export function topkSelect(corrected, k) {
  const d = corrected.length;
  if (!(k >= 1 && k <= d)) throw new RangeError("k must be in 1..dimension");
  const order = Array.from({ length: d }, (_, i) => i);
  order.sort((a, b) => Math.abs(corrected[b]) - Math.abs(corrected[a]) || a - b);
  const indices = Uint32Array.from(order.slice(0, k)).sort();
  const values = new Float32Array(k);
  const rest = Float32Array.from(corrected);
  indices.forEach((index, j) => {
    values[j] = corrected[index];
    rest[index] = 0;
  });
  return { indices, values, rest };
}

/** Header (k, d), then u32 indices, then f32 values. */
export function topkPayload(indices, values, dimension) {
  const k = indices.length;
  const out = header("topk", k, dimension, 8 * k);
  const view = new DataView(out.buffer, HEADER_BYTES);
  for (let j = 0; j < k; j++) {
    view.setUint32(4 * j, indices[j], true);
    view.setFloat32(4 * k + 4 * j, values[j], true);
  }
  return out;
}

/** One bit per coordinate (1 for x ≥ 0), big-endian within each byte. */
export function signPayload(update) {
  const d = update.length;
  const out = header("signsgd", 0, d, Math.ceil(d / 8));
  for (let i = 0; i < d; i++) if (update[i] >= 0) out[HEADER_BYTES + (i >> 3)] |= 0x80 >> (i & 7);
  return out;
}

/**
 * Top-k's error-feedback residuals, one Float32Array per job, for the life of the page (a reload
 * starts from zeros). The new residual is kept only once the upload was accepted (`commit`).
 */
export class ResidualStore {
  constructor() {
    this.residuals = new Map();
    this.pending = new Map();
  }

  residual(job, dimension) {
    const held = this.residuals.get(job);
    return held && held.length === dimension ? held : new Float32Array(dimension);
  }

  compress(job, update, k) {
    const residual = this.residual(job, update.length);
    const corrected = new Float32Array(update.length);
    for (let i = 0; i < update.length; i++) corrected[i] = update[i] + residual[i];
    const { indices, values, rest } = topkSelect(corrected, k);
    this.pending.set(job, rest);
    return topkPayload(indices, values, update.length);
  }

  commit(job) {
    if (this.pending.has(job)) this.residuals.set(job, this.pending.get(job));
    this.pending.delete(job);
  }

  discard(job) {
    this.pending.delete(job);
  }
}

/** The page's residuals (one store per page, shared by its rounds). */
export const pageResiduals = new ResidualStore();

/**
 * A compressed job's upload: `body`'s 32-byte metrics header, then its update encoded per the
 * invite's `hyperparameters.compression` (training.py's compress_body). Throws a RangeError for a
 * scheme or k it cannot honour.
 */
export function compressBody(body, { compression, job, residuals, metricsBytes = 32 }) {
  const d = (body.length - metricsBytes) / 4;
  const update = new Float32Array(body.slice(metricsBytes).buffer, 0, d);
  let payload;
  if (compression.scheme === "int8") payload = int8Payload(update, Number(compression.seed));
  else if (compression.scheme === "topk") {
    const k = Math.trunc(compression.k);
    if (!(k >= 1 && k <= d)) throw new RangeError(`top-k's k must be 1 to ${d}, not ${k}`);
    payload = residuals.compress(job, update, k);
  } else if (compression.scheme === "signsgd") payload = signPayload(update);
  else throw new RangeError(`unknown compression ${compression.scheme}`);
  const out = new Uint8Array(metricsBytes + payload.length);
  out.set(body.subarray(0, metricsBytes));
  out.set(payload, metricsBytes);
  return out;
}
