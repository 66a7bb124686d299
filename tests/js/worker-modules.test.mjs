// Unit tests for the worker page's modules that need no DOM: outbox, device, kernel pool, clock.
// The session itself is tested by session-scenarios.test.mjs. Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Device, chosenCores, hardwareCores, loadOptions, saveOptions, unsupportedReason } from "../../static/worker_frontend/device.js";
import { Outbox, readJson, safeStorage } from "../../static/worker_frontend/outbox.js";
import { Clock, KernelPool } from "../../static/worker_frontend/pool.js";

const A1 = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
const A2 = "11111111-2222-4333-8444-555555555555";
const A3 = "99999999-8888-4777-a666-555555555555";

class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

/** A Web Worker look-alike that records what it is told. */
class FakeWorker {
  static made = [];
  constructor(name) {
    this.name = name;
    this.posted = [];
    this.terminated = false;
    FakeWorker.made.push(this);
  }
  postMessage(message) {
    this.posted.push(message);
  }
  terminate() {
    this.terminated = true;
  }
  reply(data) {
    this.onmessage({ data });
  }
  lastRun() {
    return this.posted.filter((m) => m.type === "run").at(-1);
  }
}

function task(assignment, extra = {}) {
  return {
    assignment,
    task: 1,
    kernel: { name: "prime_count", sha256: "ab".repeat(32), url: "https://example.org/k.wasm" },
    input: { lo: 0n, hi: 100n, seed: 0n, params: [] },
    workUnits: 100,
    ...extra,
  };
}

function recordingPool() {
  FakeWorker.made = [];
  const events = [];
  const pool = new KernelPool({
    workerUrl: "kernel-worker.js",
    createWorker: (name) => new FakeWorker(name),
    onDone: (t, result) => events.push(["done", t.assignment, result.sha256]),
    onFailed: (t, code, message) => events.push(["failed", t.assignment, code, message]),
    onProblem: (text) => events.push(["problem", text]),
  });
  return { pool, events };
}

describe("outbox", () => {
  it("keeps frames in completion order until acked", () => {
    const box = new Outbox();
    box.add(A1, new Uint8Array([1]));
    box.add(A2, new Uint8Array([2]));
    box.add(A1, new Uint8Array([3])); // replaced: now the newest
    assert.deepEqual(box.pending().map((p) => p.assignment), [A2, A1]);
    assert.deepEqual([...box.get(A1)], [3]);
    assert.equal(box.ack(A2), true);
    assert.equal(box.ack(A2), false);
    assert.equal(box.size, 1);
    assert.equal(box.get(A2), null);
  });

  it("survives a reload through its storage, up to its byte budget", () => {
    const storage = new MemoryStorage();
    const box = new Outbox({ storage, key: "k", maxStoredBytes: 3 });
    box.add(A1, new Uint8Array([1, 2]));
    box.add(A2, new Uint8Array([3]));
    box.add(A3, new Uint8Array([4])); // over the budget: memory only
    const reloaded = new Outbox({ storage, key: "k" });
    assert.deepEqual(reloaded.pending().map((p) => p.assignment), [A1, A2]);
    assert.deepEqual([...reloaded.get(A1)], [1, 2]);
    reloaded.clear();
    assert.equal(storage.getItem("k"), null);
  });

  it("ignores corrupt or failing storage", () => {
    const storage = new MemoryStorage();
    storage.setItem("k", "{not json");
    assert.equal(new Outbox({ storage, key: "k" }).size, 0);
    const failing = { getItem: () => null, setItem: () => { throw new Error("quota"); }, removeItem: () => {} };
    const box = new Outbox({ storage: failing, key: "k" });
    box.add(A1, new Uint8Array([1]));
    assert.equal(box.size, 1);
  });

  it("wraps storage that throws", () => {
    const blocked = {};
    Object.defineProperty(blocked, "localStorage", { get: () => { throw new Error("denied"); } });
    const store = safeStorage("localStorage", blocked);
    assert.equal(store.raw, null);
    assert.equal(store.get("x"), null);
    store.set("x", "1");
    const working = safeStorage("sessionStorage", { sessionStorage: new MemoryStorage() });
    working.set("x", "1");
    assert.equal(working.get("x"), "1");
    working.remove("x");
    assert.equal(working.get("x"), null);
  });
});

describe("device", () => {
  function fakeBattery(charging) {
    const listeners = [];
    return {
      charging,
      addEventListener: (_, fn) => listeners.push(fn),
      set(value) {
        this.charging = value;
        listeners.forEach((fn) => fn());
      },
    };
  }

  it("turns charging and metered signals into pause reasons per the options", async () => {
    const battery = fakeBattery(false);
    const connection = { type: "wifi", saveData: false, listeners: [], addEventListener(_, fn) { this.listeners.push(fn); } };
    const changes = [];
    const device = new Device({
      nav: { hardwareConcurrency: 8, deviceMemory: 4, getBattery: async () => battery, connection },
      onChange: (reason, paused) => changes.push([reason, paused]),
    });
    await device.watch();
    assert.deepEqual(device.supports, { battery: true, connection: true });
    assert.deepEqual(changes, []); // no option chosen: nothing pauses
    device.setOptions({ onlyCharging: true });
    assert.deepEqual(changes, [["battery", true]]);
    battery.set(true);
    assert.deepEqual(changes.at(-1), ["battery", false]);
    device.setOptions({ pauseMetered: true });
    connection.type = "cellular";
    connection.listeners.forEach((fn) => fn());
    assert.deepEqual(changes.at(-1), ["metered", true]);
    assert.equal(changes.length, 3);
    const caps = device.capabilities();
    assert.equal(caps.cores, 8);
    assert.equal(caps.memory_mb, 4096);
    assert.equal(caps.battery_powered, false);
    assert.equal(caps.metered, true);
    assert.equal(typeof caps.simd, "boolean");
  });

  it("reports no battery or network support where the browser has none", async () => {
    const device = new Device({ nav: { hardwareConcurrency: 2 } });
    await device.watch();
    assert.deepEqual(device.supports, { battery: false, connection: false });
    assert.deepEqual(Object.keys(device.capabilities()).sort(), ["cores", "simd"]);
  });

  it("keeps the contributor's options, falling back to defaults", () => {
    const store = safeStorage("localStorage", { localStorage: new MemoryStorage() });
    assert.deepEqual(loadOptions(store, "o", 8), { cores: 7, onlyCharging: false, pauseMetered: false, paused: false });
    saveOptions(store, "o", { cores: 2, onlyCharging: true, pauseMetered: false, paused: true });
    assert.deepEqual(loadOptions(store, "o", 8), { cores: 2, onlyCharging: true, pauseMetered: false, paused: true });
    assert.equal(loadOptions(store, "o", 1).cores, 1); // a saved choice the device no longer has
    assert.deepEqual(readJson("[1]"), {});
    assert.deepEqual(readJson("{oops"), {});
  });

  it("chooses cores and explains unsupported browsers", () => {
    assert.equal(hardwareCores({ hardwareConcurrency: 200 }), 64);
    assert.equal(hardwareCores({}), 1);
    assert.equal(chosenCores(3, 8), 3);
    assert.equal(chosenCores(9, 8), 7);
    assert.equal(chosenCores(undefined, 1), 1);
    const ok = { WebAssembly: {}, Worker() {}, WebSocket() {}, isSecureContext: true, crypto: { subtle: {} } };
    assert.equal(unsupportedReason(ok), "");
    assert.match(unsupportedReason({ ...ok, isSecureContext: false }), /secure/);
    assert.match(unsupportedReason({ ...ok, WebAssembly: undefined }), /WebAssembly/);
  });
});

describe("kernel pool", () => {
  it("runs one task per Web Worker and queues the rest until a core frees", () => {
    const { pool, events } = recordingPool();
    pool.resize(1);
    pool.setToken("t".repeat(40));
    pool.run(task(A1));
    pool.run(task(A2));
    const [worker] = FakeWorker.made;
    assert.deepEqual(worker.posted[0], { type: "init", token: "t".repeat(40) });
    const run = worker.lastRun();
    assert.equal(run.assignment, A1);
    assert.equal(run.input.byteLength, 32);
    assert.equal(pool.running, 1);
    assert.equal(pool.waiting.length, 1);
    worker.reply({ type: "stage", id: run.id, stage: "running" });
    worker.reply({ type: "done", id: run.id, output: new Uint8Array([1]).buffer, sha256: "cd".repeat(32), elapsedMs: 10 });
    assert.deepEqual(events, [["done", A1, "cd".repeat(32)]]);
    assert.equal(worker.lastRun().assignment, A2);
    assert.equal(pool.rates.get("ab".repeat(32)), 10);
    worker.reply({ type: "done", id: run.id, output: new ArrayBuffer(0) }); // stale id: ignored
    assert.equal(events.length, 1);
    pool.teardown();
  });

  it("cancelling terminates the task's Web Worker and starts a fresh one", () => {
    const { pool, events } = recordingPool();
    pool.resize(1);
    pool.run(task(A1));
    pool.run(task(A2));
    pool.cancel(A2); // still waiting: just forgotten
    assert.equal(pool.waiting.length, 0);
    pool.cancel(A1);
    assert.equal(FakeWorker.made[0].terminated, true);
    assert.equal(FakeWorker.made.length, 2);
    assert.equal(pool.running, 0);
    assert.deepEqual(events, []);
    pool.teardown();
  });

  it("reports crashes and bad inputs as task failures, and shrinks when asked", () => {
    const { pool, events } = recordingPool();
    pool.resize(2);
    pool.run(task(A1));
    FakeWorker.made[0].onerror({ message: "boom" });
    assert.deepEqual(events[0], ["failed", A1, "kernel_failed", "worker crashed: boom"]);
    pool.run(task(A2, { input: { lo: 5n, hi: 1n, seed: 0n, params: [] } }));
    assert.equal(events[1][0], "failed");
    assert.equal(events[1][2], "kernel_failed");
    FakeWorker.made[1].onerror({}); // an idle worker that cannot start: the core is dropped
    assert.equal(events[2][0], "problem");
    assert.equal(pool.slots.length, 1);
    pool.resize(3);
    assert.equal(pool.slots.length, 3);
    pool.run(task(A3));
    pool.resize(1);
    assert.equal(pool.slots.length, 1); // the busy one stays until its task ends
    pool.teardown();
    assert.equal(pool.slots.length, 0);
  });
});

describe("clock", () => {
  it("ticks from a Web Worker timer and stops", () => {
    FakeWorker.made = [];
    let ticks = 0;
    const clock = new Clock({ workerUrl: "w.js", onTick: () => ticks++, createWorker: (name) => new FakeWorker(name) });
    clock.set(5000);
    const [worker] = FakeWorker.made;
    assert.deepEqual(worker.posted, [{ type: "clock", intervalMs: 5000 }]);
    worker.reply({ type: "tick" });
    assert.equal(ticks, 1);
    clock.set(null);
    assert.equal(worker.terminated, true);
    assert.equal(clock.worker, null);
  });

  it("falls back to the page's own timer", () => {
    const clock = new Clock({ workerUrl: "w.js", onTick: () => {}, createWorker: () => { throw new Error("no workers"); } });
    clock.set(5000);
    assert.notEqual(clock.fallback, null);
    clock.stop();
    assert.equal(clock.fallback, null);
  });
});
