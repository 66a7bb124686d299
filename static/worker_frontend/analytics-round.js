// One federated analytics round on the worker page: the contributor's rows in, the analytics
// kernel's summary vector (ABI v3) out, uploaded as the round's update. No DOM, so Node runs it
// in tests. Twin of edge_worker/ccgsc_worker/analytics_round.py and analytics_abi.py: for the
// same rows and query the body is byte for byte the edge worker's (docs/analytics.md).
//
// The rows are the worker's public shard (`feature` indexes a row) or, for a `contributor_local`
// job, the columns the contributor picked and consented to on this page (local-columns.js, kept
// in IndexedDB); only the vector of counts, sums, sums of squares and histogram counts leaves
// the device. `runAnalyticsRound` resolves {code, message} with training.js's codes; without
// kept data (or consent) it is `no_local_data`, a decline.
//
// ABI v3: input = 32-byte header (op, rows n, features f, columns c, max rows m, three zero
// words) | c column specs (u32 feature, u32 bins, f32 lo, f32 hi) | X f32[n·f] row-major;
// output = the 32-byte v2 metrics header (status, rows used, 0.0, 0, d, L2 norm) | f32[d].
import { METRICS_BYTES, RoundError, decodeShard, fetchChecked, uploadUpdate } from "./training.js";

export const OP_SUMMARIZE = 1;
export const HEADER_BYTES = 32;
export const COLUMN_BYTES = 16;
export const MAX_COLUMNS = 256;
export const MAX_BINS = 1024;
export const MAX_ROWS = 2 ** 24;
const BLOCKS_BEFORE_BINS = 3; // count, sum, sum of squares
const importLocalColumns = () => import("./local-columns.js");
const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** d = Σ (3 + bins) over the columns. */
export function vectorLength(columns) {
  return columns.reduce((d, column) => d + BLOCKS_BEFORE_BINS + column.bins, 0);
}

/**
 * The kernel input for `rows` × `features` f32 values `x` (Float32Array) and column specs
 * [{feature, bins, lo, hi}]. Throws RangeError on a shape the kernel would refuse.
 */
export function encodeAnalyticsInput(columns, x, { rows, features, maxRows }) {
  if (!(columns.length >= 1 && columns.length <= MAX_COLUMNS)) throw new RangeError(`1 to ${MAX_COLUMNS} columns, got ${columns.length}`);
  if (!(rows >= 0 && rows <= MAX_ROWS && features >= 1 && maxRows >= 0)) throw new RangeError("rows, features or max_rows out of range");
  if (!(x instanceof Float32Array) || x.length !== rows * features) throw new RangeError(`x must be a Float32Array of ${rows * features} values`);
  const specsEnd = HEADER_BYTES + COLUMN_BYTES * columns.length;
  const out = new Uint8Array(specsEnd + 4 * x.length);
  const view = new DataView(out.buffer);
  [OP_SUMMARIZE, rows, features, columns.length, maxRows].forEach((value, i) => view.setUint32(4 * i, value, true));
  columns.forEach(({ feature, bins, lo, hi }, i) => {
    if (!(Number.isInteger(feature) && feature >= 0 && feature < features && Number.isInteger(bins) && bins >= 1 && bins <= MAX_BINS)) {
      throw new RangeError(`bad column ${JSON.stringify({ feature, bins, lo, hi })}`);
    }
    const at = HEADER_BYTES + COLUMN_BYTES * i;
    view.setUint32(at, feature, true);
    view.setUint32(at + 4, bins, true);
    view.setFloat32(at + 8, lo, true);
    view.setFloat32(at + 12, hi, true);
  });
  out.set(new Uint8Array(x.buffer, x.byteOffset, x.byteLength), specsEnd);
  return out;
}

/** Check a kernel output's length against the columns → {status, rows, dimension, norm, body}. */
export function decodeAnalyticsOutput(bytes, columns) {
  const d = vectorLength(columns);
  if (bytes.length !== METRICS_BYTES + 4 * d) throw new RoundError("kernel_failed", `output is ${bytes.length} bytes, expected ${METRICS_BYTES + 4 * d}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dimension = view.getUint32(20, true);
  if (dimension !== d) throw new RoundError("kernel_failed", `output declares d = ${dimension}, expected ${d}`);
  return { status: view.getUint32(0, true), rows: view.getUint32(4, true), dimension, norm: view.getFloat64(24, true), body: bytes };
}

/** The rows to summarise and the column specs that read them → {x, rows, features, specs}. */
async function analyticsRows(invite, { http, loadLocalColumns, sleep }) {
  const { analytics: query, data } = invite;
  const spec = (column, feature) => ({ feature, bins: Number(column.bins), lo: Number(column.lo), hi: Number(column.hi) });
  if (data.source === "contributor_local") {
    let local;
    try {
      const { localColumns } = await loadLocalColumns();
      local = await localColumns(invite.job, query);
    } catch (err) {
      throw new RoundError("no_local_data", String(err?.message ?? err).slice(0, 300) || "no local data");
    }
    return { x: local.x, rows: local.n, features: local.features, specs: query.columns.map((column, j) => spec(column, j)) };
  }
  if (data.private || !data.url) throw new RoundError("bad_shard", "only public shards served by the site are read");
  const shard = decodeShard(await fetchChecked(http, data.url, { sleep }));
  const specs = query.columns.map((column) => spec(column, Number(column.feature)));
  if (specs.some((s) => s.feature >= shard.features)) throw new RoundError("bad_shard", "a column's feature is past the shard's rows");
  return { x: shard.x, rows: shard.n, features: shard.features, specs };
}

/**
 * Summarise this worker's rows with the pinned kernel and upload the vector → {code, message}.
 * `deps` are training.js's `runRound` deps, with `openAnalytics(bytes, kernel)` → `summarize(
 * input: Uint8Array)` resolving the output bytes (the page's kernel Web Worker; in Node,
 * kernel-runtime.js) instead of `openKernel`, and `loadLocalColumns` (defaults to importing
 * ./local-columns.js). `prepareUpload(body)` masks the body in a secure round.
 */
export async function runAnalyticsRound(invite, deps) {
  const { http, openAnalytics, deadline, clock, signal = null, onProgress = () => {}, loadLocalColumns = importLocalColumns, sleep = wait } = deps;
  const { prepareUpload = async (body) => body } = deps;
  const timeLeft = () => (signal?.aborted ? 0 : deadline - clock());
  const check = () => {
    if (signal?.aborted) throw new RoundError("cancelled", "the page stopped summarising");
    if (timeLeft() <= 0) throw new RoundError("deadline", "the round's deadline passed");
  };
  try {
    const { analytics: query, kernel } = invite;
    onProgress({ stage: "fetching" });
    const { x, rows, features, specs } = await analyticsRows(invite, { http, loadLocalColumns, sleep });
    if (rows === 0) throw new RoundError("bad_data", "no rows to summarise");
    const module = await fetchChecked(http, kernel.url, { sha256: kernel.sha256, sleep });
    check();
    onProgress({ stage: "summarising" });
    let output;
    try {
      const summarize = await openAnalytics(module, kernel);
      output = await summarize(encodeAnalyticsInput(specs, x, { rows, features, maxRows: Number(query.max_rows) }));
    } catch (err) {
      throw new RoundError("kernel_failed", String(err?.message ?? err));
    }
    const summary = decodeAnalyticsOutput(output, specs);
    if (summary.status !== 0 || summary.dimension !== Number(query.dimension)) {
      throw new RoundError("kernel_failed", `status ${summary.status}, d ${summary.dimension}`);
    }
    if (summary.body.length !== invite.upload.total_bytes) throw new RoundError("kernel_failed", `the vector is ${summary.body.length} bytes, the round expects ${invite.upload.total_bytes}`);
    const body = await prepareUpload(summary.body);
    check();
    onProgress({ stage: "uploading", sentBytes: 0, totalBytes: body.length });
    return await uploadUpdate({
      http,
      url: invite.upload.url,
      participation: invite.participation,
      baseVersion: 0,
      body,
      chunkBytes: invite.upload.chunk_bytes,
      timeLeft,
      sleep,
      onProgress: (sentBytes, totalBytes) => onProgress({ stage: "uploading", sentBytes, totalBytes }),
    });
  } catch (err) {
    if (err instanceof RoundError) return { code: signal?.aborted ? "cancelled" : err.code, message: err.message };
    return { code: "kernel_failed", message: String(err?.message ?? err).slice(0, 300) };
  }
}
