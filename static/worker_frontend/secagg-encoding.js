// Secure aggregation, browser side: updates into Z_2^32 and back. Clipping, scaling with
// stochastic rounding, the mask arithmetic and the decoding of a sum, as jobs/secagg does.

import { systemRandomBytes } from "./secagg-bytes.js";

const HALF = 2 ** 31 - 1;

/** The largest scale at which n clients' values in [−bound, bound] sum without wrapping. */
export function scaleFor(nClients, bound) {
  if (nClients < 1 || !(bound > 0)) throw new Error("need clients and a positive bound");
  const scale = (HALF / nClients - 1) / bound;
  if (scale <= 0) throw new Error("too many clients for 32 bits");
  return scale;
}

/** L2 clipping (jobs/privacy/clipping.py): {clipped, withinBound}; the input is not modified. */
export function clipL2(values, clipNorm) {
  if (!(clipNorm > 0)) throw new Error("clipNorm must be positive");
  let squares = 0;
  for (let i = 0; i < values.length; i++) squares += values[i] * values[i];
  const norm = Math.sqrt(squares);
  const clipped = Float64Array.from(values);
  if (norm <= clipNorm) return { clipped, withinBound: true };
  const factor = clipNorm / norm;
  for (let i = 0; i < clipped.length; i++) clipped[i] *= factor;
  return { clipped, withinBound: false };
}

/** The clipped update with the adaptive-clipping bit (1 when within the bound) appended. */
export function withClipBit(clipped, withinBound) {
  const out = new Float64Array(clipped.length + 1);
  out.set(clipped);
  out[clipped.length] = withinBound ? 1 : 0;
  return out;
}

/** Clip to [−bound, bound], scale, round stochastically (offsets from randomBytes(4·d)). */
export function encode(values, { scale, bound, randomBytes = systemRandomBytes }) {
  const offsets = new Uint32Array(randomBytes(4 * values.length).slice().buffer);
  const out = new Uint32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const clipped = Math.min(Math.max(values[i], -bound), bound);
    out[i] = Math.floor(clipped * scale + offsets[i] / 2 ** 32) >>> 0;
  }
  return out;
}

export function decodeSum(total, scale) {
  return Float64Array.from(new Int32Array(total.buffer, total.byteOffset, total.length), (v) =>
    v / scale,
  );
}

/** target += sign · mask in Z_2^32 (both Uint32Array of one length). */
export function addInPlace(target, mask, sign) {
  if (sign > 0) for (let i = 0; i < target.length; i++) target[i] += mask[i];
  else for (let i = 0; i < target.length; i++) target[i] -= mask[i];
}
