// Distributed-DP noise shares: symmetric Skellam noise from a byte source, the twin of the edge
// worker's ccgsc_worker/skellam.py. Given the same bytes it reads them in the same order and
// computes the same integers (tests/secagg/test_js_parity.py), so both clients draw one
// mechanism. In the page the bytes come from WebCrypto's CSPRNG (crypto.getRandomValues);
// a fixed byte stream is for tests only. See docs/security.md, "Distributed mode".
//
// Sk(v) = Poisson(v/2) − Poisson(v/2). Poisson: mean < 10 by inversion on the cumulative table
// (one uniform per draw); mean ≥ 10 by Hörmann's PTRS (two uniforms per attempt), redrawing the
// rejected coordinates in the next pass in index order, with the log-pmf in the saddle-point
// form that keeps its precision at the means the shares use (10⁸ and more).
import { systemRandomBytes } from "./secagg-bytes.js";

export const MECHANISM = "skellam";
const SMALL_MEAN = 10;
const TABLE_STOP = 16;
const HALF_LOG_TWO_PI = 0.5 * Math.log(2 * Math.PI);
const LOG_FACTORIAL = (() => {
  const out = new Float64Array(TABLE_STOP);
  for (let k = 2; k < TABLE_STOP; k++) out[k] = out[k - 1] + Math.log(k);
  return out;
})();

/** `count` doubles in [0, 1), 53 bits each: the top bits of little-endian u64 words. */
export function uniforms(count, randomBytes) {
  const words = new Uint32Array(randomBytes(8 * count).slice().buffer);
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    out[i] = (words[2 * i + 1] * 2 ** 21 + (words[2 * i] >>> 11)) * 2 ** -53;
  }
  return out;
}

function stirlingError(k) {
  const inverse = 1 / k;
  const square = inverse * inverse;
  return inverse * (1 / 12 - square * (1 / 360 - square * (1 / 1260 - square / 1680)));
}

function logPmf(k, mean) {
  if (k < TABLE_STOP) return -mean + k * Math.log(mean) - LOG_FACTORIAL[k];
  const x = (k - mean) / mean;
  return mean * (x - (1 + x) * Math.log1p(x)) - HALF_LOG_TWO_PI - 0.5 * Math.log(k) - stirlingError(k);
}

function poissonSmall(mean, size, randomBytes) {
  const stop = Math.floor(mean + 40 * Math.sqrt(mean) + 40);
  const cdf = new Float64Array(stop);
  let total = 0;
  for (let k = 0; k < stop; k++) {
    total += Math.exp(logPmf(k, mean));
    cdf[k] = total;
  }
  const u = uniforms(size, randomBytes);
  const out = new Float64Array(size);
  for (let i = 0; i < size; i++) {
    let low = 0; // the first k with cdf[k] > u (searchsorted, side "right")
    let high = stop;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (cdf[middle] > u[i]) high = middle;
      else low = middle + 1;
    }
    out[i] = low;
  }
  return out;
}

/** `size` Poisson(mean) draws as integers in a Float64Array. */
export function poisson(mean, size, randomBytes = systemRandomBytes) {
  if (!(mean >= 0) || !Number.isFinite(mean) || size < 0) {
    throw new RangeError("the mean must be finite and non-negative");
  }
  if (mean === 0 || size === 0) return new Float64Array(size);
  if (mean < SMALL_MEAN) return poissonSmall(mean, size, randomBytes);
  const root = Math.sqrt(mean);
  const b = 0.931 + 2.53 * root;
  const a = -0.059 + 0.02483 * b;
  const logInverseAlpha = Math.log(1.1239 + 1.1328 / (b - 3.4));
  const vR = 0.9277 - 3.6224 / (b - 2);
  const out = new Float64Array(size);
  let pending = Int32Array.from({ length: size }, (_, i) => i);
  while (pending.length) {
    const drawn = uniforms(2 * pending.length, randomBytes);
    const rejected = [];
    for (let j = 0; j < pending.length; j++) {
      const u = drawn[2 * j] - 0.5;
      const v = drawn[2 * j + 1];
      const us = 0.5 - Math.abs(u);
      const k = Math.floor((2 * a / us + b) * u + mean + 0.43);
      let accept = us >= 0.07 && v <= vR;
      if (!accept && k >= 0 && !(us < 0.013 && v > us)) {
        const lhs = Math.log(v) + logInverseAlpha - Math.log(a / (us * us) + b);
        accept = lhs <= logPmf(k, mean);
      }
      if (accept) out[pending[j]] = k;
      else rejected.push(pending[j]);
    }
    pending = Int32Array.from(rejected);
  }
  return out;
}

/** A symmetric Skellam share of `variance` per coordinate: integers in a Float64Array. The first
 *  Poisson vector is drawn completely, then the second, as the edge worker does. */
export function skellamShare(dimension, variance, randomBytes = systemRandomBytes) {
  if (!(variance > 0) || !Number.isFinite(variance)) {
    throw new RangeError("the variance must be positive");
  }
  const positive = poisson(variance / 2, dimension, randomBytes);
  const negative = poisson(variance / 2, dimension, randomBytes);
  for (let i = 0; i < dimension; i++) positive[i] -= negative[i];
  return positive;
}

/** An invite's `secagg.noise` block → the share to add ({mechanism, variance}). */
export function noiseShare(dimension, block, randomBytes = systemRandomBytes) {
  if (block.mechanism !== MECHANISM) throw new RangeError(`unknown noise mechanism ${block.mechanism}`);
  return skellamShare(dimension, block.variance, randomBytes);
}

/** encoded (Z_2^32) + integer noise, wrapping: a new Uint32Array. */
export function addShare(encoded, share) {
  if (encoded.length !== share.length) throw new RangeError("the share must match the update");
  const out = new Uint32Array(encoded.length);
  for (let i = 0; i < encoded.length; i++) {
    // |share| < 2^53: the remainder is exact, and >>> 0 maps it into [0, 2^32)
    out[i] = (encoded[i] + (share[i] % 2 ** 32)) >>> 0;
  }
  return out;
}
