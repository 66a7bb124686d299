// Times 2NN (784-200-200-10 ReLU, softmax cross-entropy) training in TensorFlow.js with its WASM
// backend: the algorithm of the mlp kernel (shuffled minibatches of B, plain SGD), one epoch of
// n samples per repeat. `node training_tfjs.mjs < request.json` with
// {"n", "batch_sizes": [...], "repeats", "learning_rate"}; prints JSON results.
// Needs `npm ci` (bench-only devDependencies); the backend's .wasm files are read from
// node_modules on disk, nothing is fetched.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { performance } from "node:perf_hooks";

const require = createRequire(import.meta.url);
const tf = await import("@tensorflow/tfjs");
const wasm = await import("@tensorflow/tfjs-backend-wasm");

const request = JSON.parse(readFileSync(0, "utf8"));
const dist = path.dirname(require.resolve("@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm"));
wasm.setWasmPaths(`${dist}/`);
await tf.setBackend("wasm");
await tf.ready();

function lcg(seed) {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

const SIZES = [784, 200, 200, 10];
const { n, repeats } = request;
const rand = lcg(1);
const xData = new Float32Array(n * 784).map(() => Math.floor(rand() * 256) / 255);
const labels = Int32Array.from({ length: n }, () => Math.floor(rand() * 10));
const X = tf.tensor2d(xData, [n, 784]);
const Y = tf.oneHot(tf.tensor1d(labels, "int32"), 10).toFloat();
const vars = [];
for (let l = 1; l < SIZES.length; l++) {
  const limit = Math.sqrt(6 / SIZES[l - 1]);
  vars.push(tf.variable(tf.randomUniform([SIZES[l - 1], SIZES[l]], -limit, limit, "float32", 1)));
  vars.push(tf.variable(tf.zeros([SIZES[l]])));
}

function forward(xb) {
  let h = xb;
  for (let l = 0; l < 3; l++) {
    const z = tf.add(tf.matMul(h, vars[2 * l]), vars[2 * l + 1]);
    h = l < 2 ? tf.relu(z) : z;
  }
  return h;
}

async function epoch(batchSize, samples) {
  const optimizer = tf.train.sgd(request.learning_rate);
  const order = tf.util.createShuffledIndices(samples);
  for (let start = 0; start < samples; start += batchSize) {
    const idx = tf.tensor1d(Int32Array.from(order.slice(start, start + batchSize)), "int32");
    optimizer.minimize(() => tf.losses.softmaxCrossEntropy(tf.gather(Y, idx), forward(tf.gather(X, idx))));
    idx.dispose();
  }
  await vars[0].data(); // wait for the last step
  optimizer.dispose();
}

const results = [];
for (const batchSize of request.batch_sizes) {
  await epoch(batchSize, Math.min(n, 20 * batchSize)); // warm-up: kernels compiled, memory grown
  const seconds = [];
  const cpuSeconds = [];
  for (let r = 0; r < repeats; r++) {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await epoch(batchSize, n);
    seconds.push((performance.now() - t0) / 1000);
    const cpu = process.cpuUsage(cpu0);
    cpuSeconds.push((cpu.user + cpu.system) / 1e6);
  }
  results.push({ batch_size: batchSize, samples: n, seconds, cpu_seconds: cpuSeconds });
}
const threads = await tf.env().getAsync("WASM_HAS_MULTITHREAD_SUPPORT");
const simd = await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT");
console.log(JSON.stringify({ engine: `node ${process.version}`, tfjs: tf.version.tfjs, backend: tf.getBackend(), simd, threads, results }));
