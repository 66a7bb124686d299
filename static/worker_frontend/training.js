// One FL round on the worker page: fetch, train, upload. No DOM, so Node runs it in tests.
// Twin of edge_worker/ccgsc_worker/training.py: the same steps, seeds, body and outcome codes
// (docs/federated-learning.md, "Browser clients").
//
// `runRound(invite, deps)` fetches the global weights and the kernel by hash (checked with
// WebCrypto), the worker's public shard (or, for a private-data job, the contributor's local data
// through local-data.js), trains E local epochs (one kernel call per epoch, momentum carried,
// epoch e shuffled with SplitMix64(seed, e)), and uploads the body (32-byte metrics header, then
// f32[d]) in chunks with a SHA-256 per chunk, resuming from the server's state after a failure.
// A DP job's update is clipped to `hyperparameters.dp.clip_norm`; a SCAFFOLD job fetches c (and
// cᵢ) by hash, trains with the correction c − cᵢ and appends Δc f32[d] (update-maths.js). A
// compressed job's update is encoded after the header (compression.js: int8, top-k with the job's
// error-feedback residual, kept once the upload is accepted, or signSGD).
// Every step respects the round's deadline. It resolves {code, message}:
//   uploaded  queued for the fold          rejected  the server refused the update (reason)
//   late      the round closed first       deadline, fetch_failed, hash_mismatch, bad_shard,
//   bad_invite, kernel_failed, non_finite, upload_failed, cancelled   errors (a dropout)
//   no_simd, low_memory, no_local_data    decline reasons: the session sends `round_declined`
// (An analytics round runs analytics-round.js instead, with the same codes.)
import { sha256Hex } from "./protocol.js";
import { compressBody, pageResiduals } from "./compression.js";
import { clipUpdate, controlCorrection, fsum, scaffoldBody } from "./update-maths.js";

export { fsum };

export const SHARD_MAGIC = 0x44534343; // "CCSD" read as a little-endian u32
export const SHARD_HEADER_BYTES = 16; // magic, n, features, classes
export const METRICS_BYTES = 32; // status u32, samples u32, loss_sum f64, correct u32, d u32, l2 f64
export const FETCH_ATTEMPTS = 3;
export const UPLOAD_ATTEMPTS = 5;
export const REQUEST_TIMEOUT_MS = 30_000;
const STATUS_OK = 0;
const STATUS_TEXT = { 1: "non-finite result", 2: "non-finite input" };
const U64 = (1n << 64n) - 1n;
const GOLDEN = 0x9e3779b97f4a7c15n;

/** A round cannot go on: `code` is one of the module's codes. */
export class RoundError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "RoundError";
    this.code = code;
  }
}

/** A u64 sub-seed by SplitMix64 steps (BigInt), as training.py's derive_seed. */
export function deriveSeed(seed, ...parts) {
  let state = BigInt(seed) & U64;
  for (const part of parts) {
    state = (state + GOLDEN + (BigInt(part) & U64)) & U64;
    let z = ((state ^ (state >> 30n)) * 0xbf58476d1ce4e5b9n) & U64;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & U64;
    state = z ^ (z >> 31n);
  }
  return state;
}

/** A shard body → {x: Float32Array [n·features], y: Int32Array [n], n, features}. */
export function decodeShard(bytes) {
  if (bytes.length < SHARD_HEADER_BYTES) throw new RoundError("bad_shard", "shard shorter than its header");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const [magic, n, features] = [0, 4, 8].map((offset) => view.getUint32(offset, true));
  const xBytes = 4 * n * features;
  if (magic !== SHARD_MAGIC || bytes.length !== SHARD_HEADER_BYTES + xBytes + 4 * n || n === 0) {
    throw new RoundError("bad_shard", "not a shard body, or an empty one");
  }
  const copy = bytes.slice(SHARD_HEADER_BYTES); // aligned and owned
  return { x: new Float32Array(copy.buffer, 0, n * features), y: new Int32Array(copy.buffer, xBytes, n), n, features };
}

/**
 * E local epochs from `weights` → the upload body: metrics header, then update f32[d].
 * `runEpoch(call)` runs one ABI v2 call (kernel-runtime.js's `runTraining` fields) and resolves
 * its decoded result. With E = 1 the body is the kernel's output unchanged; with more, the update
 * is the sum of the epochs' steps and the metrics are the last epoch's (as in training.py).
 * `control` (SCAFFOLD: c − cᵢ, Float32Array) is the kernel's control input for every minibatch;
 * `hyperparameters.dp.clip_norm` clips the whole update to that L2 norm (the header carries it).
 */
export async function trainUpdate({ runEpoch, sizes, weights, x, y, hyperparameters, seed, timeLeft, control = null, onEpoch = () => {} }) {
  const epochs = Math.trunc(hyperparameters.epochs);
  const momentum = Number(hyperparameters.momentum);
  const n = y.length;
  const batch = Math.min(Math.trunc(hyperparameters.batch_size), n);
  const carry = momentum > 0 && epochs > 1;
  const start = Float32Array.from(weights);
  const current = Float32Array.from(weights);
  let buffer = null;
  let result = null;
  for (let epoch = 0; epoch < epochs; epoch++) {
    if (timeLeft() <= 0) throw new RoundError("deadline", `deadline passed before epoch ${epoch + 1}`);
    onEpoch(epoch, epochs);
    try {
      result = await runEpoch({
        op: "train",
        sizes,
        weights: Float32Array.from(current),
        x,
        y,
        batchSize: batch,
        seed: deriveSeed(seed, epoch),
        learningRate: Number(hyperparameters.learning_rate),
        momentum,
        proxMu: Number(hyperparameters.proximal_mu),
        momentumBuffer: buffer,
        returnMomentum: carry,
        control,
        nParams: start.length,
      });
    } catch (err) {
      throw new RoundError("kernel_failed", String(err?.message ?? err));
    }
    if (!result.ok || !result.update) throw new RoundError("non_finite", STATUS_TEXT[result.status] ?? "bad status");
    if (epochs === 1) break;
    for (let i = 0; i < current.length; i++) current[i] = current[i] + result.update[i]; // f32 sums, as array("f")
    buffer = result.momentum;
  }
  onEpoch(epochs, epochs);
  let update = result.update;
  let norm = result.updateL2;
  if (epochs !== 1) {
    update = new Float32Array(start.length);
    for (let i = 0; i < start.length; i++) update[i] = current[i] - start[i];
    norm = Math.sqrt(fsum(Array.from(update, (v) => v * v)));
  }
  if (hyperparameters.dp) ({ update, norm } = clipUpdate(update, Number(hyperparameters.dp.clip_norm)));
  const body = new Uint8Array(METRICS_BYTES + 4 * start.length);
  const view = new DataView(body.buffer);
  view.setUint32(0, STATUS_OK, true);
  view.setUint32(4, result.samples, true);
  view.setFloat64(8, result.lossSum, true);
  view.setUint32(16, result.correct, true);
  view.setUint32(20, start.length, true);
  view.setFloat64(24, norm, true);
  body.set(new Uint8Array(update.buffer, update.byteOffset, update.byteLength), METRICS_BYTES);
  return body;
}

/** An HTTP answer: status and body bytes. */
export class HttpAnswer {
  constructor(status, body) {
    this.status = status;
    this.body = body;
  }

  /** The body as JSON ({} when it is not). */
  json() {
    try {
      const value = JSON.parse(new TextDecoder().decode(this.body) || "{}");
      return value && typeof value === "object" ? value : {};
    } catch {
      return {};
    }
  }
}

/**
 * Same-origin HTTP for a worker: every request carries `Authorization: Worker <token>` and no
 * cookies. Paths resolve against `origin`; anything that would leave it is refused (the token goes
 * with every request). HTTP errors are answers; network errors reject with the fetch error.
 */
export class Http {
  constructor({ origin, token, fetch = globalThis.fetch.bind(globalThis), timeoutMs = REQUEST_TIMEOUT_MS }) {
    this.origin = new URL(origin).origin;
    this.token = token;
    this.fetch = fetch;
    this.timeoutMs = timeoutMs;
  }

  async request(method, path, { body = null, headers = {} } = {}) {
    const url = new URL(path, `${this.origin}/`);
    if (url.origin !== this.origin) throw new RoundError("fetch_failed", `refusing to leave the server's origin: ${url.href}`);
    const response = await this.fetch(url.href, {
      method,
      body,
      headers: { Authorization: `Worker ${this.token}`, ...headers },
      credentials: "omit",
      cache: method === "GET" ? "default" : "no-store", // GETs are content-addressed or ETagged
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    return new HttpAnswer(response.status, new Uint8Array(await response.arrayBuffer()));
  }
}

const code = (answer) => String(answer.json().error?.code ?? answer.status);
const message = (answer) => String(answer.json().error?.message ?? "").slice(0, 300);
const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** GET `path` (retrying network errors), checked against `sha256` when given → bytes. */
export async function fetchChecked(http, path, { sha256 = null, sleep = wait } = {}) {
  for (let attempt = 0; attempt < FETCH_ATTEMPTS; attempt++) {
    let answer;
    try {
      answer = await http.request("GET", path);
    } catch (err) {
      if (err instanceof RoundError) throw err;
      if (attempt + 1 === FETCH_ATTEMPTS) throw new RoundError("fetch_failed", `${path}: ${err?.message ?? err}`);
      await sleep(200 * 2 ** attempt);
      continue;
    }
    // A pause or an end closed the round while this worker was fetching: late, not a failure.
    if (answer.status === 409 && code(answer) === "round_closed") throw new RoundError("late", "the round closed before its data arrived");
    if (answer.status !== 200) throw new RoundError("fetch_failed", `${path}: HTTP ${answer.status}`);
    if (sha256 !== null && (await sha256Hex(answer.body)) !== sha256) {
      throw new RoundError("hash_mismatch", `${path} does not match its sha256`);
    }
    return answer.body;
  }
  throw new RoundError("fetch_failed", `${path}: no attempt left`);
}

/** A control variate f32[d] by hash (checked, and of the model's length), as a Float32Array. */
async function fetchVector(http, reference, parameters, sleep) {
  const bytes = await fetchChecked(http, reference.url, { sha256: reference.sha256, sleep });
  if (bytes.length !== 4 * parameters) throw new RoundError("hash_mismatch", "a control variate does not have the model's length");
  return new Float32Array(bytes.slice().buffer);
}

/** PUT one chunk (twice if its checksum was refused in transit); false to resume. */
async function putChunk(http, upload, index, chunk) {
  const headers = { "Content-Type": "application/octet-stream", "X-Chunk-SHA256": await sha256Hex(chunk) };
  for (let attempt = 0; attempt < 2; attempt++) {
    const answer = await http.request("PUT", `${upload}/chunks/${index}`, { body: chunk, headers });
    if (answer.status === 200) return true;
    if (code(answer) !== "checksum_mismatch") return false;
  }
  return false;
}

/**
 * Upload `body` in chunks and complete it → {code, message}. Creating again with the same values
 * resumes; after any failed chunk the server's state says which chunks are still missing; a chunk
 * refused for its checksum is sent again. `onProgress(sentBytes, totalBytes)` after each chunk.
 */
export async function uploadUpdate({ http, url, participation, baseVersion, body, chunkBytes, timeLeft, sleep = wait, onProgress = () => {} }) {
  const base = `${url.replace(/\/+$/, "")}/`;
  const create = JSON.stringify({
    participation,
    total_bytes: body.length,
    chunk_size: chunkBytes,
    sha256: await sha256Hex(body),
    base_version: baseVersion,
  });
  const json = { "Content-Type": "application/json" };
  for (let attempt = 0; attempt < UPLOAD_ATTEMPTS; attempt++) {
    if (timeLeft() <= 0) throw new RoundError("deadline", "deadline passed while uploading");
    if (attempt) await sleep(Math.min(200 * 2 ** attempt, Math.max(0, timeLeft())));
    try {
      const answer = await http.request("POST", base, { body: create, headers: json });
      if (answer.status === 409 && code(answer) === "round_closed") return { code: "late", message: "the round closed before the update arrived" };
      if (answer.status !== 200 && answer.status !== 201) {
        if (answer.status >= 500) continue;
        return { code: "rejected", message: `${code(answer)}: ${message(answer)}` };
      }
      const state = answer.json();
      const upload = `${base}${state.upload}`;
      const received = new Set(state.chunks_received);
      let sent = received.size * chunkBytes;
      let complete = true;
      for (let index = 0; index < state.chunk_count; index++) {
        if (received.has(index)) continue;
        if (timeLeft() <= 0) throw new RoundError("deadline", "deadline passed while uploading");
        const chunk = body.subarray(index * chunkBytes, (index + 1) * chunkBytes);
        if (!(await putChunk(http, upload, index, chunk))) {
          complete = false;
          break;
        }
        sent += chunk.length;
        onProgress(Math.min(sent, body.length), body.length);
      }
      if (!complete) continue;
      const done = await http.request("POST", `${upload}/complete`);
      if (done.status === 202) return { code: "uploaded", message: "" };
      if (done.status === 422) {
        const rejection = done.json().rejection ?? {};
        return { code: "rejected", message: `${rejection.code ?? null}: ${rejection.message ?? null}` };
      }
      if (done.status === 409 && code(done) === "round_closed") return { code: "late", message: "the round closed before the update was complete" };
      if (done.status < 500 && code(done) !== "incomplete") return { code: "rejected", message: `${code(done)}: ${message(done)}` };
    } catch (err) {
      if (err instanceof RoundError) throw err;
      // the connection failed: ask for the state again and send what is missing
    }
  }
  throw new RoundError("upload_failed", `upload did not complete in ${UPLOAD_ATTEMPTS} attempts`);
}

/** Why this device cannot train the invite (a decline reason), or null. */
export function declineReason(invite, { simd = true, memoryMb = null } = {}) {
  if (!simd) return "no_simd";
  // Weights, update, momentum and the kernel's working copy: about four f32 copies of the model.
  const neededMb = Math.floor((16 * invite.model.parameters) / (1024 * 1024));
  if (Number.isFinite(memoryMb) && memoryMb < neededMb) return "low_memory";
  return null;
}

const importLocalData = () => import("./local-data.js");

/**
 * The contributor's own data for a private-data job, from local-data.js (built separately:
 * `localShard(jobId, dataSpec)` → {x, y, n, features}, or a thrown LocalDataError). Without the
 * module, or when it throws (no data, no consent, unreadable), the round ends `no_local_data`.
 */
async function localData(invite, load) {
  let shard;
  try {
    const { localShard } = await load();
    shard = await localShard(invite.job, invite.data);
  } catch (err) {
    throw new RoundError("no_local_data", String(err?.message ?? err).slice(0, 300) || "no local data");
  }
  const { x, y, n, features } = shard ?? {};
  if (!(x instanceof Float32Array) || !(y instanceof Int32Array) || !n || y.length !== n || x.length !== n * features) {
    throw new RoundError("bad_shard", "local data has the wrong shape");
  }
  return shard;
}

/**
 * Train and upload one round → {code, message}. `deps`: `http` (an Http), `openKernel(bytes,
 * kernel)` → `runEpoch(call)` (the page's kernel Web Worker; in Node, kernel-runtime.js),
 * `deadline` and `clock()` in ms, optional `capabilities` ({simd, memoryMb}), `signal`
 * (AbortSignal: `cancelled`), `onProgress({stage, epoch, epochs, sentBytes, totalBytes})`,
 * `loadLocalData` (defaults to importing ./local-data.js), `sleep`, and `prepareUpload(body)` →
 * the bytes to upload (a secure round masks the trained body there; it may throw a RoundError),
 * and `residuals` (top-k's error feedback per job; the page's own store by default).
 */
export async function runRound(invite, deps) {
  const { http, openKernel, deadline, clock, capabilities = {}, signal = null, onProgress = () => {}, loadLocalData = importLocalData, sleep = wait } = deps;
  const { prepareUpload = async (body) => body, residuals = pageResiduals } = deps;
  const compression = invite.hyperparameters?.compression ?? null;
  const timeLeft = () => (signal?.aborted ? 0 : deadline - clock());
  const check = () => {
    if (signal?.aborted) throw new RoundError("cancelled", "the page stopped training");
  };
  try {
    const declined = declineReason(invite, capabilities);
    if (declined) return { code: declined, message: `this device cannot train this model (${declined})` };
    const { model, data, kernel } = invite;
    onProgress({ stage: "fetching" });
    let shard;
    if (data.private) shard = await localData(invite, loadLocalData);
    else if (!data.url) throw new RoundError("bad_shard", "the invite names no shard");
    check();
    const bytes = await fetchChecked(http, model.url, { sha256: model.sha256, sleep });
    if (bytes.length !== 4 * model.parameters) throw new RoundError("hash_mismatch", "weights do not have the model's length");
    const weights = new Float32Array(bytes.buffer, bytes.byteOffset, model.parameters);
    if (!shard) shard = decodeShard(await fetchChecked(http, data.url, { sleep }));
    if (shard.features !== model.sizes[0]) throw new RoundError("bad_shard", "shard features do not match the model's inputs");
    // SCAFFOLD: c, and this partition client's cᵢ when the server holds one
    const control = model.control ? await fetchVector(http, model.control, model.parameters, sleep) : null;
    const clientControl = control && model.client_control ? await fetchVector(http, model.client_control, model.parameters, sleep) : null;
    const module = await fetchChecked(http, kernel.url, { sha256: kernel.sha256, sleep });
    check();
    let runEpoch;
    try {
      runEpoch = await openKernel(module, kernel);
    } catch (err) {
      throw new RoundError("kernel_failed", String(err?.message ?? err));
    }
    const epochs = invite.hyperparameters.epochs;
    const trained = await trainUpdate({
      runEpoch,
      sizes: [...model.sizes],
      weights,
      x: shard.x,
      y: shard.y,
      hyperparameters: invite.hyperparameters,
      seed: BigInt(invite.seed ?? "0"),
      timeLeft,
      control: control && controlCorrection(control, clientControl),
      onEpoch: (epoch) => {
        check();
        onProgress({ stage: "training", epoch, epochs });
      },
    });
    let dense = control ? scaffoldBody(trained, { control, hyperparameters: invite.hyperparameters }) : trained;
    if (compression) {
      try {
        dense = compressBody(dense, { compression, job: invite.job, residuals });
      } catch (err) {
        throw new RoundError("bad_invite", String(err?.message ?? err));
      }
    }
    const body = await prepareUpload(dense);
    check();
    onProgress({ stage: "uploading", sentBytes: 0, totalBytes: body.length });
    const outcome = await uploadUpdate({
      http,
      url: invite.upload.url,
      participation: invite.participation,
      baseVersion: model.version,
      body,
      chunkBytes: invite.upload.chunk_bytes,
      timeLeft,
      sleep,
      onProgress: (sentBytes, totalBytes) => onProgress({ stage: "uploading", sentBytes, totalBytes }),
    });
    // Top-k's unsent remainder is kept only once the server has the sent part.
    if (outcome.code === "uploaded") residuals.commit(invite.job);
    else residuals.discard(invite.job);
    return outcome;
  } catch (err) {
    residuals.discard(invite.job);
    if (err instanceof RoundError) return { code: signal?.aborted ? "cancelled" : err.code, message: err.message };
    return { code: "kernel_failed", message: String(err?.message ?? err).slice(0, 300) };
  }
}
