// Kernel pool: one module Web Worker per lent core, one task each at a time, plus the heartbeat
// clock. The session decides which task runs; the pool runs it and reports back. Cancelling a
// task terminates its Web Worker (freeing the core at once) and starts a fresh one.
//
// Outcomes go to the callbacks given to the constructor:
//   onStage(task)                        the task's stage changed (fetching, compiling, running)
//   onDone(task, {output, sha256, elapsedMs})
//   onFailed(task, code, message)
//   onProblem(text)                      a Web Worker could not start (the pool shrinks)
import { encodeInput } from "./protocol.js";

export const TASK_TIMEOUT_MS = 15 * 60_000; // a task running longer than this is a `timeout`

export class KernelPool {
  constructor({ workerUrl, onStage = () => {}, onDone = () => {}, onFailed = () => {}, onProblem = () => {}, createWorker = null }) {
    this.workerUrl = workerUrl;
    this.callbacks = { onStage, onDone, onFailed, onProblem };
    this.createWorker = createWorker || ((name) => new Worker(this.workerUrl, { type: "module", name }));
    this.slots = []; // {index, worker, busy: null | {id, task, startedAt, runStartedAt, stage, watchdog}, retiring}
    this.waiting = []; // tasks told to run while no core was free
    this.token = "";
    this.size = 0;
    this.sequence = 0;
    this.rates = new Map(); // kernel sha256 -> work units per ms, from finished tasks (display only)
  }

  get running() {
    return this.slots.filter((s) => s.busy).length;
  }

  /** The token kernel downloads carry. */
  setToken(token) {
    this.token = token;
    for (const slot of this.slots) slot.worker.postMessage({ type: "init", token });
  }

  /** Keep `size` Web Workers; extra ones retire when their task ends. */
  resize(size) {
    this.size = size;
    let active = this.slots.filter((s) => !s.retiring).length;
    while (active < size) {
      const slot = { index: this.slots.length, worker: null, busy: null, retiring: false };
      slot.worker = this.spawn(slot);
      this.slots.push(slot);
      active++;
    }
    for (let i = this.slots.length - 1; i >= 0 && active > size; i--) {
      if (!this.slots[i].retiring) {
        this.slots[i].retiring = true;
        active--;
      }
    }
    this.retireIdle();
    this.pump();
  }

  /** Run a decoded assignment (with its kernel URL already resolved). */
  run(task) {
    this.waiting.push(task);
    this.pump();
  }

  /** Abandon a task: forget it if waiting, else terminate its Web Worker. */
  cancel(assignment) {
    const index = this.waiting.findIndex((t) => t.assignment === assignment);
    if (index >= 0) this.waiting.splice(index, 1);
    const slot = this.slots.find((s) => s.busy && s.busy.task.assignment === assignment);
    if (slot) this.recycle(slot);
    this.pump();
  }

  /** Terminate every Web Worker and forget every task. */
  teardown() {
    for (const slot of this.slots) {
      if (slot.busy) clearTimeout(slot.busy.watchdog);
      slot.worker.terminate();
    }
    this.slots.length = 0;
    this.waiting.length = 0;
  }

  /** A display-only progress estimate for a busy slot, from earlier tasks of the same kernel. */
  estimate(busy, now = performance.now()) {
    if (busy.stage !== "running" || !busy.runStartedAt) return null;
    const rate = this.rates.get(busy.task.kernel.sha256);
    if (!rate || !busy.task.workUnits) return null;
    const expectedMs = busy.task.workUnits / rate;
    return Math.min(0.95, (now - busy.runStartedAt) / Math.max(1, expectedMs));
  }

  // -- internals -------------------------------------------------------------------------

  spawn(slot) {
    const worker = this.createWorker(`ccgsc-core-${slot.index + 1}`);
    worker.onmessage = (event) => this.onMessage(slot, worker, event.data || {});
    worker.onerror = (event) => {
      event.preventDefault?.();
      if (slot.worker !== worker) return;
      const busy = slot.busy;
      if (busy) {
        this.recycle(slot); // a fresh worker for the next task
        this.callbacks.onFailed(busy.task, "kernel_failed", `worker crashed: ${event.message || "unknown error"}`);
      } else {
        // The worker script itself failed to start: drop this core rather than retry in a loop.
        slot.retiring = true;
        this.retireIdle();
        this.callbacks.onProblem("A background worker could not start; running with fewer cores.");
      }
      this.pump();
    };
    if (this.token) worker.postMessage({ type: "init", token: this.token });
    return worker;
  }

  retireIdle() {
    for (let i = this.slots.length - 1; i >= 0; i--) {
      const slot = this.slots[i];
      if (slot.retiring && !slot.busy) {
        slot.worker.terminate();
        this.slots.splice(i, 1);
      }
    }
    this.slots.forEach((s, i) => (s.index = i));
  }

  recycle(slot) {
    if (slot.busy) clearTimeout(slot.busy.watchdog);
    slot.busy = null;
    slot.worker.terminate();
    if (slot.retiring) this.retireIdle();
    else slot.worker = this.spawn(slot);
  }

  pump() {
    for (const slot of this.slots) {
      if (!this.waiting.length) break;
      if (slot.busy || slot.retiring) continue;
      this.start(slot, this.waiting.shift());
    }
  }

  start(slot, task) {
    let input;
    try {
      input = encodeInput(task.input.lo, task.input.hi, task.input.seed, task.input.params);
    } catch (err) {
      this.callbacks.onFailed(task, "kernel_failed", `input: ${err.message}`);
      return;
    }
    const id = ++this.sequence;
    slot.busy = { id, task, startedAt: performance.now(), runStartedAt: 0, stage: "starting", watchdog: null };
    slot.busy.watchdog = setTimeout(() => {
      if (slot.busy?.id !== id) return;
      this.recycle(slot);
      this.callbacks.onFailed(task, "timeout", `no result after ${TASK_TIMEOUT_MS / 60000} minutes`);
      this.pump();
    }, TASK_TIMEOUT_MS);
    const kernel = { sha256: task.kernel.sha256, url: task.kernel.url, name: task.kernel.name };
    slot.worker.postMessage({ type: "run", id, assignment: task.assignment, kernel, input: input.buffer }, [input.buffer]);
    this.callbacks.onStage(task);
  }

  onMessage(slot, worker, msg) {
    if (slot.worker !== worker || !slot.busy || msg.id !== slot.busy.id) return;
    const busy = slot.busy;
    if (msg.type === "stage") {
      busy.stage = msg.stage;
      if (msg.stage === "running") busy.runStartedAt = performance.now();
      this.callbacks.onStage(busy.task);
      return;
    }
    clearTimeout(busy.watchdog);
    slot.busy = null;
    this.retireIdle();
    if (msg.type === "done") {
      const { task } = busy;
      if (task.workUnits && msg.elapsedMs > 0) this.rates.set(task.kernel.sha256, task.workUnits / msg.elapsedMs);
      this.callbacks.onDone(task, { output: new Uint8Array(msg.output), sha256: msg.sha256, elapsedMs: msg.elapsedMs });
    } else if (msg.type === "failed") {
      this.callbacks.onFailed(busy.task, msg.code, msg.message);
    }
    this.pump();
  }
}

/**
 * The heartbeat clock: ticks from a timer inside a Web Worker, which hidden tabs do not throttle
 * the way they throttle the page's own timers; falls back to setInterval.
 */
export class Clock {
  constructor({ workerUrl, onTick, createWorker = null }) {
    this.workerUrl = workerUrl;
    this.onTick = onTick;
    this.createWorker = createWorker || ((name) => new Worker(this.workerUrl, { type: "module", name }));
    this.worker = null;
    this.fallback = null;
  }

  /** Tick every `intervalMs` from now on; null stops. */
  set(intervalMs) {
    this.stop();
    if (intervalMs === null || intervalMs === undefined) return;
    const useFallback = () => {
      this.stop();
      this.fallback = setInterval(this.onTick, intervalMs);
    };
    try {
      this.worker = this.createWorker("ccgsc-clock");
      this.worker.onmessage = (event) => {
        if (event.data?.type === "tick") this.onTick();
      };
      this.worker.onerror = useFallback;
      this.worker.postMessage({ type: "clock", intervalMs });
    } catch {
      useFallback();
    }
  }

  stop() {
    if (this.worker) this.worker.terminate();
    this.worker = null;
    if (this.fallback) clearInterval(this.fallback);
    this.fallback = null;
  }
}
