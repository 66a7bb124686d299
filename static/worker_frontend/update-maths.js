// The update maths a round applies after the kernel, DOM-free: the exact sum Python's math.fsum
// gives (for update norms), DP clipping (twin of edge_worker/ccgsc_worker/dp.py's clip_update) and
// SCAFFOLD's correction and upload body (twins of training.py's control_correction and
// scaffold_body). Float32 results are rounded from float64 arithmetic, as Python's array("f") does,
// so the page's upload is byte-identical to the edge worker's.

/** Math.fsum as Python computes it (Shewchuk's partials, correctly rounded), for the update norm. */
export function fsum(values) {
  const partials = [];
  for (let x of values) {
    let i = 0;
    for (let y of partials) {
      if (Math.abs(x) < Math.abs(y)) [x, y] = [y, x];
      const hi = x + y;
      const lo = y - (hi - x);
      if (lo) partials[i++] = lo;
      x = hi;
    }
    partials.length = i;
    partials.push(x);
  }
  let n = partials.length;
  if (!n) return 0;
  let hi = partials[--n];
  let lo = 0;
  while (n > 0) {
    const x = hi;
    const y = partials[--n];
    hi = x + y;
    lo = y - (hi - x);
    if (lo) break;
  }
  if (n > 0 && ((lo < 0 && partials[n - 1] < 0) || (lo > 0 && partials[n - 1] > 0))) {
    const y = lo * 2;
    const x = hi + y;
    if (y === x - hi) hi = x;
  }
  return hi;
}

/**
 * The update (Float32Array) scaled to L2 norm ≤ clipNorm → {update, norm, within}: the norm is
 * summed exactly in float64; an update already within comes back unchanged (dp.py's clip_update).
 */
export function clipUpdate(update, clipNorm) {
  if (!(clipNorm > 0)) throw new RangeError("clip_norm must be positive");
  const norm = Math.sqrt(fsum(Array.from(update, (v) => v * v)));
  if (norm <= clipNorm) return { update, norm, within: true };
  const scale = clipNorm / norm;
  const clipped = new Float32Array(update.length);
  for (let i = 0; i < update.length; i++) clipped[i] = update[i] * scale;
  return { update: clipped, norm: Math.sqrt(fsum(Array.from(clipped, (v) => v * v))), within: false };
}

/** SCAFFOLD's training correction c − cᵢ as Float32Array (cᵢ = zeros when the server holds none). */
export function controlCorrection(control, clientControl = null) {
  if (!clientControl) return control;
  const out = new Float32Array(control.length);
  for (let i = 0; i < control.length; i++) out[i] = control[i] - clientControl[i];
  return out;
}

/**
 * SCAFFOLD's upload: the trained body (metrics header, update f32[d]) followed by Δc f32[d], with
 * Δc = −c − Δy / (K·η) and K = E · ⌈n / B⌉ local steps (option II; training.py's scaffold_body).
 */
export function scaffoldBody(body, { control, hyperparameters, metricsBytes = 32 }) {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const samples = view.getUint32(4, true);
  const batch = Math.min(Math.trunc(hyperparameters.batch_size), samples);
  const steps = Math.trunc(hyperparameters.epochs) * Math.ceil(samples / batch);
  const scale = 1 / (steps * Number(hyperparameters.learning_rate));
  const d = control.length;
  const out = new Uint8Array(body.length + 4 * d);
  out.set(body);
  const delta = new Float32Array(out.buffer, body.length, d);
  for (let i = 0; i < d; i++) delta[i] = -control[i] - view.getFloat32(metricsBytes + 4 * i, true) * scale;
  return out;
}
