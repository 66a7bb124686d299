// The worker session as a pure state machine: no DOM, no network, no timers, no clock.
//
// `Session` takes one input at a time (socket opened or closed, a server message, a task
// finished or failed, a heartbeat tick, pause/resume, a change of cores, stop) and returns the
// effects the page must carry out, in order, as plain objects:
//   {do: "send", message}                 send a JSON control message
//   {do: "send_result", assignment}       send the result frame the outbox holds
//   {do: "run", assignment}               start a task (session.assignment(id) is the decoded task)
//   {do: "cancel", assignment}            abandon a running task
//   {do: "connect", delay_ms}             open the socket after delay_ms (the back-off schedule)
//   {do: "heartbeat", interval_ms}        tick every interval_ms from now on (null stops)
//   {do: "close", code}                   close the socket
//   {do: "end", reason, code}             the session is over ("requested", "unauthorized",
//                                         "protocol_version")
//   {do: "notify", event, ...}            something happened (counters, the problems list)
//
// Its twin is edge_worker/ccgsc_worker/session.py; tests/scenarios/worker_session.json drives
// both with the same inputs and expects the same effects (tests/js/session-scenarios.test.mjs).
import {
  Backoff,
  MAX_RESULT_BYTES,
  MAX_SLOTS,
  ProtocolError,
  capacityMessage,
  decodeAssign,
  encodeResultFrame,
  errorMessage,
  parseServerMessage,
  progressMessage,
} from "./protocol.js";
import { Outbox } from "./outbox.js";

export const PHASE = Object.freeze({
  IDLE: "idle", // not started, or left
  CONNECTING: "connecting", // waiting for the socket to open (after the back-off delay)
  HELLO: "hello", // hello sent, waiting for welcome
  CONNECTED: "connected", // welcomed
  STOPPED: "stopped", // the server refused us for good (4001, 4002)
});
const QUEUED = "queued";
const RUNNING = "running";
const STOPPING = "stopping"; // the pause reason a graceful stop adds
const FATAL = new Map([
  [4001, "unauthorized"],
  [4002, "protocol_version"],
]);
const ACK_STATUSES = ["accepted", "duplicate", "late", "discarded"];
const DEFAULT_HEARTBEAT_MS = 10_000;
const MIN_HEARTBEAT_MS = 100;

export function zeroCounters() {
  return {
    tasks_completed: 0,
    errors: 0,
    results_acked: 0,
    results_resent: 0,
    acks: {},
    validated: 0,
    work_units: 0,
    cancelled: 0,
    server_errors: 0,
    sessions: 0,
    disconnects: 0,
    reconnects: 0,
  };
}

const notify = (event, info = {}) => ({ do: "notify", event, ...info });
const send = (message) => ({ do: "send", message });

/** A non-negative integer count, also from a decimal string (u64 may travel as text). */
function count(value) {
  if (typeof value === "string" && /^[0-9]+$/.test(value)) return Number(value);
  if (Number.isInteger(value) && value >= 0) return value;
  return null;
}

export class Session {
  /**
   * @param {{concurrency: number, buildHello: (slots: number, resume: string|null) => object,
   *   backoff?: Backoff, outbox?: Outbox, workerId?: string|null, heartbeatFloorMs?: number,
   *   counters?: object}} options
   */
  constructor({ concurrency, buildHello, backoff = new Backoff(), outbox = new Outbox(), workerId = null, heartbeatFloorMs = 1000, counters = null }) {
    this.phase = PHASE.IDLE;
    this.concurrency = concurrency;
    this.workerId = workerId;
    this.contributor = null;
    this.heartbeatMs = DEFAULT_HEARTBEAT_MS;
    this.maxResultBytes = MAX_RESULT_BYTES;
    this.pauseReasons = new Set();
    this.stopping = false;
    this.sentSlots = null;
    this.outbox = outbox;
    this.backoff = backoff;
    this.counters = { ...zeroCounters(), ...(counters || {}) };
    this.buildHello = buildHello;
    this.heartbeatFloorMs = heartbeatFloorMs;
    this.tasks = new Map(); // assignment id -> queued | running, in arrival order
    this.assignments = new Map(); // assignment id -> decoded assign
  }

  // -- reading ---------------------------------------------------------------------------

  get connected() {
    return this.phase === PHASE.CONNECTED;
  }

  /** The capacity to advertise: 0 while anything pauses the worker. */
  get desiredSlots() {
    return this.pauseReasons.size ? 0 : this.concurrency;
  }

  assignment(id) {
    return this.assignments.get(id);
  }

  /** The state the scenario table checks (the same keys as session.py). */
  snapshot() {
    return {
      phase: this.phase,
      worker: this.workerId,
      contributor: this.contributor,
      heartbeat_ms: this.heartbeatMs,
      concurrency: this.concurrency,
      slots: this.desiredSlots,
      paused: [...this.pauseReasons].sort(),
      stopping: this.stopping,
      tasks: Object.fromEntries(this.tasks),
      outbox: this.outbox.pending().map((p) => p.assignment),
      counters: { ...this.counters, acks: { ...this.counters.acks } },
    };
  }

  // -- inputs ----------------------------------------------------------------------------

  /** Dispatch one input written as an object (the scenario table's form). */
  handle(event) {
    switch (event.event) {
      case "start":
        return this.start();
      case "opened":
        return this.opened();
      case "message":
        return this.message(event.data);
      case "closed":
        return this.closed(event.code ?? null, event.reason ?? "");
      case "finished":
        return this.finished(event.assignment, event.output, event.sha256, event.elapsed_ms ?? 0);
      case "failed":
        return this.failed(event.assignment, event.code, event.message ?? "");
      case "tick":
        return this.tick();
      case "pause":
        return this.pause(event.reason);
      case "resume":
        return this.resume(event.reason);
      case "concurrency":
        return this.setConcurrency(event.concurrency);
      case "stop":
        return this.stop({ abandon: !!event.abandon });
      default:
        throw new Error(`unknown session input ${event.event}`);
    }
  }

  /** Begin contributing: connect now. */
  start() {
    if (this.phase !== PHASE.IDLE) return [];
    this.phase = PHASE.CONNECTING;
    this.stopping = false;
    this.pauseReasons.delete(STOPPING);
    return [{ do: "connect", delay_ms: 0 }];
  }

  /** The socket is open: say hello (resuming the previous identity, if any). */
  opened() {
    if (this.phase !== PHASE.CONNECTING) return [];
    this.phase = PHASE.HELLO;
    this.sentSlots = this.desiredSlots;
    return [send(this.buildHello(this.sentSlots, this.workerId))];
  }

  /** One frame from the server. */
  message(data) {
    if (typeof data !== "string") return [notify("bad_message", { error: "unexpected binary frame from the server" })];
    try {
      const message = parseServerMessage(data);
      const handler = SERVER_HANDLERS[message.type];
      if (!handler) throw new ProtocolError(`unknown message type ${JSON.stringify(message.type)}`);
      return handler.call(this, message);
    } catch (err) {
      return [notify("bad_message", { error: String(err.message).slice(0, 300) })];
    }
  }

  /** The socket closed (or never opened: code null). */
  closed(code, reason = "") {
    if (this.phase === PHASE.IDLE || this.phase === PHASE.STOPPED) return [];
    const effects = [];
    if (this.phase === PHASE.CONNECTED) {
      this.counters.disconnects += 1;
      effects.push({ do: "heartbeat", interval_ms: null }, notify("disconnected"));
    }
    this.sentSlots = null;
    if (FATAL.has(code)) {
      effects.push(...this.abandon());
      this.phase = PHASE.STOPPED;
      return [...effects, { do: "end", reason: FATAL.get(code), code }];
    }
    if (this.stopping) {
      // The connection went while finishing: nothing left to wait for.
      effects.push(...this.abandon());
      this.phase = PHASE.IDLE;
      this.stopping = false;
      return [...effects, { do: "end", reason: "requested", code: null }];
    }
    this.phase = PHASE.CONNECTING;
    this.counters.reconnects += 1;
    const delayMs = this.backoff.next();
    return [...effects, notify("reconnecting", { delay_ms: delayMs, code, reason }), { do: "connect", delay_ms: delayMs }];
  }

  /** A task produced its output (with its SHA-256): keep the frame until acked, send it. */
  finished(id, output, sha256, elapsedMs = 0) {
    if (!this.tasks.delete(id)) return [notify("discarded", { assignment: id })];
    this.assignments.delete(id);
    const bytes = output instanceof Uint8Array ? output : new Uint8Array(output);
    if (bytes.length > this.maxResultBytes) {
      return this.reportFailure(id, "kernel_failed", `output of ${bytes.length} bytes exceeds the ${this.maxResultBytes}-byte result limit`);
    }
    let frame;
    try {
      frame = encodeResultFrame({ assignment: id, sha256, elapsedMs }, bytes);
    } catch (err) {
      return this.reportFailure(id, "internal", err.message);
    }
    this.outbox.add(id, frame);
    this.counters.tasks_completed += 1;
    const effects = [notify("completed", { assignment: id, elapsed_ms: elapsedMs })];
    if (this.connected) effects.push({ do: "send_result", assignment: id });
    return [...effects, ...this.pump(), ...this.maybeEndStop()];
  }

  /** A task failed on this worker: report it so the server reissues the replica. */
  failed(id, code, message = "") {
    if (!this.tasks.delete(id)) return [];
    this.assignments.delete(id);
    return this.reportFailure(id, code, message);
  }

  /** Heartbeat: a `progress` for every held task (queued ones hold a lease as well). */
  tick() {
    if (!this.connected) return [];
    return [...this.tasks.keys()].map((id) => send(progressMessage(id)));
  }

  /** Take no new work for `reason` (user, battery, metered, stopping). */
  pause(reason) {
    this.pauseReasons.add(reason);
    return this.syncCapacity();
  }

  /** Lift one pause reason; work resumes when none is left. */
  resume(reason) {
    this.pauseReasons.delete(reason);
    return this.syncCapacity();
  }

  /** Run up to `concurrency` tasks at once (one per lent core), and advertise it. */
  setConcurrency(concurrency) {
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > MAX_SLOTS) {
      throw new RangeError(`concurrency must be in 1..${MAX_SLOTS}, got ${concurrency}`);
    }
    this.concurrency = concurrency;
    return [...this.syncCapacity(), ...this.pump()];
  }

  /**
   * Leave. Gracefully (connected, not `abandon`): take no new work, drop queued tasks, finish
   * running ones, deliver their results and end once the outbox is empty.
   */
  stop({ abandon = false } = {}) {
    if (this.phase === PHASE.IDLE || this.phase === PHASE.STOPPED) return [];
    if (abandon || !this.connected) {
      const effects = this.abandon();
      if (this.phase !== PHASE.IDLE) effects.push({ do: "close", code: 1000 });
      if (this.phase === PHASE.CONNECTED) effects.push({ do: "heartbeat", interval_ms: null });
      this.phase = PHASE.IDLE;
      this.sentSlots = null;
      this.stopping = false;
      return [...effects, { do: "end", reason: "requested", code: null }];
    }
    this.stopping = true;
    const effects = this.pause(STOPPING);
    for (const [id, state] of [...this.tasks]) {
      if (state === QUEUED) effects.push(...this.drop(id, "stopping"));
    }
    return [...effects, ...this.maybeEndStop()];
  }

  // -- internals -------------------------------------------------------------------------

  reportFailure(id, code, message) {
    this.counters.errors += 1;
    const effects = [notify("failed", { assignment: id, code, message })];
    if (this.connected) effects.push(send(errorMessage(id, code, message)));
    return [...effects, ...this.pump(), ...this.maybeEndStop()];
  }

  /** Start queued tasks, oldest first, while fewer than `concurrency` run. */
  pump() {
    let running = 0;
    for (const state of this.tasks.values()) if (state === RUNNING) running += 1;
    const effects = [];
    for (const [id, state] of this.tasks) {
      if (running >= this.concurrency) break;
      if (state === QUEUED) {
        this.tasks.set(id, RUNNING);
        running += 1;
        effects.push({ do: "run", assignment: id });
      }
    }
    return effects;
  }

  drop(id, reason) {
    this.tasks.delete(id);
    this.assignments.delete(id);
    return [notify("dropped", { assignment: id, reason })];
  }

  /** Forget every held task; running ones are cancelled. */
  abandon() {
    const effects = [];
    for (const [id, state] of this.tasks) if (state === RUNNING) effects.push({ do: "cancel", assignment: id });
    this.tasks.clear();
    this.assignments.clear();
    return effects;
  }

  syncCapacity() {
    const wanted = this.desiredSlots;
    if (!this.connected || wanted === this.sentSlots) return [];
    this.sentSlots = wanted;
    return [send(capacityMessage(wanted))];
  }

  maybeEndStop() {
    if (!this.stopping || this.tasks.size || this.outbox.size) return [];
    this.stopping = false;
    this.phase = PHASE.IDLE;
    this.sentSlots = null;
    return [
      { do: "heartbeat", interval_ms: null },
      { do: "close", code: 1000 },
      { do: "end", reason: "requested", code: null },
    ];
  }
}

// Server messages, one handler each (called with the session as `this`). A handler throws on a
// malformed message; `message()` turns that into a `bad_message` notification.
const SERVER_HANDLERS = {
  welcome(message) {
    const { worker, heartbeat_ms: heartbeatMs } = message;
    if (typeof worker !== "string" || !worker) throw new ProtocolError("welcome: worker must be a string");
    if (typeof heartbeatMs !== "number" || !Number.isFinite(heartbeatMs)) throw new ProtocolError("welcome: heartbeat_ms must be a number");
    const resumed = worker === this.workerId;
    this.workerId = worker;
    this.contributor = typeof message.contributor === "string" ? message.contributor : null;
    this.heartbeatMs = Math.max(MIN_HEARTBEAT_MS, Math.trunc(heartbeatMs));
    const maxResultBytes = message.limits && typeof message.limits === "object" ? count(message.limits.max_result_bytes) : null;
    if (maxResultBytes !== null) this.maxResultBytes = Math.min(MAX_RESULT_BYTES, maxResultBytes);
    this.phase = PHASE.CONNECTED;
    this.backoff.reset();
    this.counters.sessions += 1;
    const effects = [];
    if (Array.isArray(message.outstanding)) {
      const expected = new Set(message.outstanding.filter((a) => typeof a === "string"));
      for (const [id, state] of [...this.tasks]) {
        if (state === QUEUED && !expected.has(id)) effects.push(...this.drop(id, "not_outstanding"));
      }
    }
    effects.push(
      notify("welcome", {
        worker,
        contributor: this.contributor,
        resumed,
        heartbeat_ms: this.heartbeatMs,
        resending: this.outbox.size,
        limits: message.limits && typeof message.limits === "object" ? message.limits : null,
      }),
    );
    effects.push(...this.syncCapacity());
    for (const { assignment } of this.outbox.pending()) {
      this.counters.results_resent += 1;
      effects.push({ do: "send_result", assignment });
    }
    effects.push(...this.tick());
    effects.push({ do: "heartbeat", interval_ms: Math.max(this.heartbeatFloorMs, Math.floor(this.heartbeatMs / 2)) });
    return effects;
  },

  assign(message) {
    let task;
    try {
      task = decodeAssign(message);
    } catch (err) {
      const id = message.assignment;
      const effects = [notify("bad_message", { error: String(err.message).slice(0, 300) })];
      if (typeof id === "string" && id && !this.tasks.has(id) && this.connected) {
        effects.push(send(errorMessage(id, "kernel_rejected", err.message)));
      }
      return effects;
    }
    const id = task.assignment;
    if (this.tasks.has(id)) return [];
    // Assigned again after we finished it: the result answers it.
    if (this.outbox.has(id)) return this.connected ? [{ do: "send_result", assignment: id }] : [];
    if (this.stopping) return [notify("dropped", { assignment: id, reason: "stopping" })];
    this.tasks.set(id, QUEUED);
    this.assignments.set(id, task);
    return [notify("assign", { assignment: id }), ...this.pump()];
  },

  ack(message) {
    const { assignment: id, status } = message;
    if (typeof id !== "string" || !ACK_STATUSES.includes(status)) throw new ProtocolError("ack: bad assignment or status");
    if (!this.outbox.ack(id)) return [];
    this.counters.results_acked += 1;
    this.counters.acks[status] = (this.counters.acks[status] || 0) + 1;
    return [notify("ack", { assignment: id, status }), ...this.maybeEndStop()];
  },

  credit(message) {
    const validated = count(message.validated);
    const workUnits = count(message.work_units);
    if (validated === null || workUnits === null) {
      throw new ProtocolError("credit: validated and work_units must be non-negative integers");
    }
    this.counters.validated += validated;
    this.counters.work_units += workUnits;
    return [notify("credit", { validated, work_units: workUnits })];
  },

  cancel(message) {
    const id = message.assignment;
    const state = typeof id === "string" ? this.tasks.get(id) : undefined;
    if (state === undefined) return [];
    this.counters.cancelled += 1;
    const effects = [notify("cancel", { assignment: id, state, reason: message.reason ?? null })];
    if (state === QUEUED) return [...effects, ...this.drop(id, "cancelled")];
    this.tasks.delete(id);
    this.assignments.delete(id);
    return [...effects, { do: "cancel", assignment: id }, ...this.pump()];
  },

  error(message) {
    if (typeof message.code !== "string") throw new ProtocolError("error: missing code");
    this.counters.server_errors += 1;
    return [notify("server_error", { code: message.code, message: message.message ?? null, ref: message.ref ?? null })];
  },

  pong() {
    return [];
  },
};
