// Module Web Worker: runs one CCGSC kernel task at a time for the contribute page.
//
// Page → worker:
//   {type: "init", token}                       worker token for kernel downloads
//   {type: "run", id, assignment, kernel: {sha256, url, name, limits?}, input: ArrayBuffer}
//                                               an ABI v1 task, an encoded ABI v2 call, or an
//                                               ABI v3 analytics input (analytics-round.js)
//   {type: "train", id, kernel: {...}, call}    an ABI v2 call as fields (encodeTrainInput);
//                                               kernel.bytes (ArrayBuffer), when given, are the
//                                               module the page fetched (checked again here)
//   {type: "clock", intervalMs}                 (clock role only) post "tick" every intervalMs
// Worker → page:
//   {type: "stage", id, stage: "fetching" | "compiling" | "running"}
//   {type: "done", id, output: ArrayBuffer, sha256, elapsedMs}
//   {type: "trained", id, result: {status, ok, samples, lossSum, correct, updateL2, update,
//                                  momentum}, elapsedMs}   (update/momentum: Float32Array)
//   {type: "failed", id, code, message}
//   {type: "tick"}
//
// Kernels are fetched with `Authorization: Worker <token>`, their SHA-256 is checked before
// compiling, and compiled modules are cached per sha256 (module bytes also in Cache Storage,
// where available, so other workers and later visits skip the download). `limits`
// ({inputBytes, outputBytes, memoryBytes}) are the kernel's manifest limits; the runtime
// caps them at the kind's ceilings.
import { sha256Hex } from "./protocol.js";
import { KernelError, compileVerified, runKernel, runTraining } from "./kernel-runtime.js";

const CACHE_NAME = "ccgsc-kernels-v1";
const modules = new Map(); // sha256 -> Promise<WebAssembly.Module>
let token = "";
let clockTimer = null;

function cacheKey(sha256) {
  // A synthetic same-origin key: the bytes are content-addressed, so the sha256 is the identity.
  return new URL(`/__ccgsc-kernel-cache/${sha256}`, self.location.origin).href;
}

async function cachedBytes(sha256) {
  if (!self.caches) return null;
  try {
    const cache = await self.caches.open(CACHE_NAME);
    const hit = await cache.match(cacheKey(sha256));
    return hit ? new Uint8Array(await hit.arrayBuffer()) : null;
  } catch {
    return null;
  }
}

async function storeBytes(sha256, bytes) {
  if (!self.caches) return;
  try {
    const cache = await self.caches.open(CACHE_NAME);
    await cache.put(cacheKey(sha256), new Response(bytes, { headers: { "Content-Type": "application/wasm" } }));
  } catch {
    /* storage full or unavailable: the HTTP cache still helps */
  }
}

async function dropCached(sha256) {
  if (!self.caches) return;
  try {
    const cache = await self.caches.open(CACHE_NAME);
    await cache.delete(cacheKey(sha256));
  } catch {
    /* ignore */
  }
}

const DOWNLOAD_ATTEMPTS = 3;

async function download(url) {
  // Retried a few times: a phone switching networks should not fail the task outright.
  let lastError = "";
  for (let attempt = 0; attempt < DOWNLOAD_ATTEMPTS; attempt++) {
    if (attempt) await new Promise((resolve) => setTimeout(resolve, 1000 * 2 ** (attempt - 1)));
    let response;
    try {
      response = await fetch(url, { headers: { Authorization: `Worker ${token}` }, credentials: "same-origin" });
    } catch (err) {
      lastError = err?.message ?? String(err);
      continue;
    }
    if (response.ok) return new Uint8Array(await response.arrayBuffer());
    lastError = `HTTP ${response.status}`;
    if (response.status < 500 && response.status !== 429) break; // not worth retrying
  }
  throw new KernelError("internal", `kernel download failed: ${lastError}`);
}

async function loadModule(kernel, report) {
  if (kernel.bytes) {
    report("compiling");
    return compileVerified(new Uint8Array(kernel.bytes), kernel.sha256); // hash checked first
  }
  const cached = await cachedBytes(kernel.sha256);
  if (cached) {
    try {
      report("compiling");
      return await compileVerified(cached, kernel.sha256);
    } catch (err) {
      await dropCached(kernel.sha256); // a damaged cache entry: fall back to the network
      if (!(err instanceof KernelError) || err.code !== "hash_mismatch") throw err;
    }
  }
  report("fetching");
  const bytes = await download(kernel.url);
  report("compiling");
  const module = await compileVerified(bytes, kernel.sha256); // hash checked before compiling
  await storeBytes(kernel.sha256, bytes);
  return module;
}

function getModule(kernel, report) {
  let promise = modules.get(kernel.sha256);
  if (!promise) {
    promise = loadModule(kernel, report);
    modules.set(kernel.sha256, promise);
    promise.catch(() => modules.delete(kernel.sha256)); // retry next time
  }
  return promise;
}

async function run({ id, kernel, input }) {
  const report = (stage) => self.postMessage({ type: "stage", id, stage });
  try {
    const module = await getModule(kernel, report);
    report("running");
    const started = performance.now();
    const output = runKernel(module, new Uint8Array(input), kernel.limits);
    const elapsedMs = Math.round(performance.now() - started);
    const sha256 = await sha256Hex(output);
    self.postMessage({ type: "done", id, output: output.buffer, sha256, elapsedMs }, [output.buffer]);
  } catch (err) {
    const code = err instanceof KernelError ? err.code : "internal";
    self.postMessage({ type: "failed", id, code, message: String(err?.message ?? err).slice(0, 480) });
  }
}

async function train({ id, kernel, call }) {
  const report = (stage) => self.postMessage({ type: "stage", id, stage });
  try {
    const module = await getModule(kernel, report);
    report("running");
    const started = performance.now();
    const result = runTraining(module, call, kernel.limits);
    const elapsedMs = Math.round(performance.now() - started);
    const transfer = [result.update, result.momentum].filter(Boolean).map((a) => a.buffer);
    self.postMessage({ type: "trained", id, result, elapsedMs }, [...new Set(transfer)]);
  } catch (err) {
    const code = err instanceof KernelError ? err.code : "internal";
    self.postMessage({ type: "failed", id, code, message: String(err?.message ?? err).slice(0, 480) });
  }
}

self.onmessage = (event) => {
  const msg = event.data || {};
  switch (msg.type) {
    case "init":
      token = String(msg.token || "");
      break;
    case "run":
      run(msg);
      break;
    case "train":
      train(msg);
      break;
    case "clock":
      // Timers in a worker are not throttled like a hidden tab's, so heartbeats keep leases alive.
      if (clockTimer) clearInterval(clockTimer);
      clockTimer = msg.intervalMs > 0 ? setInterval(() => self.postMessage({ type: "tick" }), msg.intervalMs) : null;
      break;
    default:
      break;
  }
};
