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
//   {do: "train", invite}                 train one FL round (the parsed round_invite) and upload
//                                         the update (training.js); report its end with
//                                         roundFinished(participation, outcome, message)
//   {do: "secagg", message}               a secure round's phase message (secagg_keys,
//                                         secagg_ciphertexts, secagg_unmask, secagg_abort) for the
//                                         round's secure-round client (rounds.js)
//
// What each server message does is in session-messages.js. The twins are
// edge_worker/ccgsc_worker/session.py and session_messages.py; tests/scenarios/worker_session.json
// drives both with the same inputs and expects the same effects.
import {
  Backoff,
  DECLINE_REASONS,
  MAX_RESULT_BYTES,
  MAX_SLOTS,
  PROTOCOL_VERSION,
  ProtocolError,
  capacityMessage,
  encodeResultFrame,
  errorMessage,
  parseServerMessage,
  progressMessage,
  roundDeclinedMessage,
} from "./protocol.js";
import { Outbox } from "./outbox.js";
import { CONNECTED, QUEUED, RUNNING, SERVER_MESSAGES, notify, refuseAssign, send } from "./session-messages.js";

export const PHASE = Object.freeze({
  IDLE: "idle", // not started, or left
  CONNECTING: "connecting", // waiting for the socket to open (after the back-off delay)
  HELLO: "hello", // hello sent, waiting for welcome
  CONNECTED, // welcomed
  STOPPED: "stopped", // the server refused us for good (4001, 4002)
});
const STOPPING = "stopping"; // the pause reason a graceful stop adds
const FATAL = new Map([
  [4001, "unauthorized"],
  [4002, "protocol_version"],
]);
const DEFAULT_HEARTBEAT_MS = 10_000;

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
    this.rounds = new Set(); // participations being trained
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

  /** "queued", "running", or undefined when the task is not held. */
  taskState(id) {
    return this.tasks.get(id);
  }

  /** Keep a new decoded assignment, queued until `pump` starts it. */
  hold(task) {
    this.tasks.set(task.assignment, QUEUED);
    this.assignments.set(task.assignment, task);
  }

  /** Forget a held task; return the state it was in (undefined when it was not held). */
  release(id) {
    const state = this.tasks.get(id);
    this.tasks.delete(id);
    this.assignments.delete(id);
    return state;
  }

  /** How often to heartbeat: half the lease period, never below the client's floor. */
  get heartbeatIntervalMs() {
    return Math.max(this.heartbeatFloorMs, Math.floor(this.heartbeatMs / 2));
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
      rounds: [...this.rounds].sort((a, b) => a - b),
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
      case "round_finished":
        return this.roundFinished(event.participation, event.outcome, event.message ?? "");
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
      const handler = SERVER_MESSAGES[message.type];
      if (!handler) throw new ProtocolError(`unknown message type ${JSON.stringify(message.type)}`);
      return handler(this, message);
    } catch (err) {
      const raw = lenientJson(data);
      if (err instanceof ProtocolError && raw.type === "assign" && raw.v === PROTOCOL_VERSION) {
        return refuseAssign(this, raw, err.message);
      }
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
    if (this.release(id) === undefined) return [notify("discarded", { assignment: id })];
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
    return [...effects, ...this.pump(), ...this.endStopIfDone()];
  }

  /** A task failed on this worker: report it so the server reissues the replica. */
  failed(id, code, message = "") {
    if (this.release(id) === undefined) return [];
    return this.reportFailure(id, code, message);
  }

  /**
   * A round's training and upload ended (`uploaded`, `rejected`, `late`, an error code, or a
   * decline reason such as `no_local_data`): forget it and say so; a decline reason is also sent
   * to the server as `round_declined` (not a dropout, then).
   */
  roundFinished(participation, outcome, message = "") {
    if (!this.rounds.has(participation)) return [];
    this.rounds.delete(participation);
    const effects = [notify("round_finished", { participation, outcome, message })];
    if (DECLINE_REASONS.includes(outcome) && this.connected) {
      effects.push(send(roundDeclinedMessage(participation, outcome, message)));
    }
    return [...effects, ...this.endStopIfDone()];
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
    return [...effects, ...this.endStopIfDone()];
  }

  // -- internals -------------------------------------------------------------------------

  reportFailure(id, code, message) {
    this.counters.errors += 1;
    const effects = [notify("failed", { assignment: id, code, message })];
    if (this.connected) effects.push(send(errorMessage(id, code, message)));
    return [...effects, ...this.pump(), ...this.endStopIfDone()];
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

  /** Forget a held task without running it. */
  drop(id, reason) {
    this.release(id);
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

  endStopIfDone() {
    if (!this.stopping || this.tasks.size || this.outbox.size || this.rounds.size) return [];
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

/** The frame as a JSON object when it is one (to answer a malformed `assign`), else {}. */
function lenientJson(data) {
  try {
    const raw = JSON.parse(data);
    return raw && typeof raw === "object" && !Array.isArray(raw) ? raw : {};
  } catch {
    return {};
  }
}
