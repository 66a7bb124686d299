// What each server message does to a worker session (twin: session_messages.py).
//
// One function per message type, called by `Session.message` with the parsed message; each
// returns the session's effects and throws on a malformed message (the session turns that into
// a `bad_message` notification). Also the small vocabulary both modules share.
import { MAX_RESULT_BYTES, ProtocolError, decodeAssign, errorMessage, roundDeclinedMessage } from "./protocol.js";

export const QUEUED = "queued";
export const RUNNING = "running";
export const CONNECTED = "connected";
const MIN_HEARTBEAT_MS = 100;
const ACK_STATUSES = ["accepted", "duplicate", "late", "discarded"];

/** A notification effect: something happened that counters or the problems list may show. */
export const notify = (event, info = {}) => ({ do: "notify", event, ...info });

/** A send effect for one JSON control message. */
export const send = (message) => ({ do: "send", message });

/** A non-negative integer count, also from a decimal string (u64 may travel as text). */
export function count(value) {
  if (typeof value === "string" && /^[0-9]+$/.test(value)) return Number(value);
  if (Number.isInteger(value) && value >= 0) return value;
  return null;
}

/**
 * Connected: keep the identity and limits, drop what the server no longer expects, re-send
 * unacknowledged results, heartbeat every held task and start the heartbeat timer.
 */
function welcome(session, message) {
  const { worker, heartbeat_ms: heartbeatMs } = message;
  if (typeof worker !== "string" || !worker) throw new ProtocolError("welcome: worker must be a string");
  if (typeof heartbeatMs !== "number" || !Number.isFinite(heartbeatMs)) throw new ProtocolError("welcome: heartbeat_ms must be a number");
  const resumed = worker === session.workerId;
  session.workerId = worker;
  session.contributor = typeof message.contributor === "string" ? message.contributor : null;
  session.heartbeatMs = Math.max(MIN_HEARTBEAT_MS, Math.trunc(heartbeatMs));
  const limits = message.limits && typeof message.limits === "object" ? message.limits : null;
  const maxResultBytes = limits ? count(limits.max_result_bytes) : null;
  if (maxResultBytes !== null) session.maxResultBytes = Math.min(MAX_RESULT_BYTES, maxResultBytes);
  session.phase = CONNECTED;
  session.backoff.reset();
  session.counters.sessions += 1;
  const effects = [];
  if (Array.isArray(message.outstanding)) {
    const expected = new Set(message.outstanding.filter((a) => typeof a === "string"));
    for (const [id, state] of [...session.tasks]) {
      if (state === QUEUED && !expected.has(id)) effects.push(...session.drop(id, "not_outstanding"));
    }
  }
  effects.push(
    notify("welcome", {
      worker,
      contributor: session.contributor,
      resumed,
      heartbeat_ms: session.heartbeatMs,
      resending: session.outbox.size,
      limits,
    }),
  );
  effects.push(...session.syncCapacity());
  for (const { assignment } of session.outbox.pending()) {
    session.counters.results_resent += 1;
    effects.push({ do: "send_result", assignment });
  }
  effects.push(...session.tick());
  effects.push({ do: "heartbeat", interval_ms: session.heartbeatIntervalMs });
  return effects;
}

/**
 * An `assign` we cannot run: say so at once so the server can hand the task to another worker
 * (whether its schema or its decoding failed).
 */
export function refuseAssign(session, message, error) {
  const id = message.assignment;
  const effects = [notify("bad_message", { error: String(error).slice(0, 300) })];
  if (typeof id === "string" && id && session.taskState(id) === undefined && session.connected) {
    effects.push(send(errorMessage(id, "kernel_rejected", String(error))));
  }
  return effects;
}

/** Hold a new task (it runs when a core is free); refuse one that cannot be decoded. */
function assign(session, message) {
  let task;
  try {
    task = decodeAssign(message);
  } catch (err) {
    return refuseAssign(session, message, err.message);
  }
  const id = task.assignment;
  if (session.taskState(id) !== undefined) return [];
  // Assigned again after we finished it: the result answers it.
  if (session.outbox.has(id)) return session.connected ? [{ do: "send_result", assignment: id }] : [];
  if (session.stopping) return [notify("dropped", { assignment: id, reason: "stopping" })];
  session.hold(task);
  return [notify("assign", { assignment: id }), ...session.pump()];
}

/** The server stored a result (whatever the status): stop keeping it. */
function ack(session, message) {
  const { assignment: id, status } = message;
  if (typeof id !== "string" || !ACK_STATUSES.includes(status)) throw new ProtocolError("ack: bad assignment or status");
  if (!session.outbox.ack(id)) return [];
  session.counters.results_acked += 1;
  session.counters.acks[status] = (session.counters.acks[status] || 0) + 1;
  return [notify("ack", { assignment: id, status }), ...session.endStopIfDone()];
}

/** Replicas of this worker validated: add them up. */
function credit(session, message) {
  const validated = count(message.validated);
  const workUnits = count(message.work_units);
  if (validated === null || workUnits === null) {
    throw new ProtocolError("credit: validated and work_units must be non-negative integers");
  }
  session.counters.validated += validated;
  session.counters.work_units += workUnits;
  return [notify("credit", { validated, work_units: workUnits })];
}

/** Stop working on a task: drop it if queued, abandon it if running (its core frees). */
function cancel(session, message) {
  const id = message.assignment;
  const state = typeof id === "string" ? session.taskState(id) : undefined;
  if (state === undefined) return [];
  session.counters.cancelled += 1;
  const effects = [notify("cancel", { assignment: id, state, reason: message.reason ?? null })];
  if (state === QUEUED) return [...effects, ...session.drop(id, "cancelled")];
  session.release(id);
  return [...effects, { do: "cancel", assignment: id }, ...session.pump()];
}

/** The server refused something we sent: count it and say so; nothing else changes. */
function error(session, message) {
  if (typeof message.code !== "string") throw new ProtocolError("error: missing code");
  session.counters.server_errors += 1;
  return [notify("server_error", { code: message.code, message: message.message ?? null, ref: message.ref ?? null })];
}

/** The answer to a ping: nothing to do. */
function pong() {
  return [];
}

/**
 * An FL round invitation: train it (the page fetches, trains and uploads with training.js)
 * unless this participation is already being trained (a re-sent invite: nothing to do) or the
 * worker is paused or stopping (then it declines, so the round does not wait for it).
 */
function round_invite(session, message) {
  const participation = message.participation;
  const info = { job: message.job, round: message.round, participation };
  if (session.rounds.has(participation)) return [];
  if (session.pauseReasons.size) return declineRound(session, info, "paused", [...session.pauseReasons].sort().join(","));
  session.rounds.add(participation);
  return [notify("round_invite", info), { do: "train", invite: message }];
}

/** Say (and tell the server, when connected) that this worker will not train a round. */
export function declineRound(session, info, reason, message = "") {
  const effects = [notify("round_declined", { ...info, reason })];
  if (session.connected) effects.push(send(roundDeclinedMessage(info.participation, reason, message)));
  return effects;
}

/** A secure round's phase message: the page's secure-round client (rounds.js) answers it. */
function secagg(session, message) {
  return [{ do: "secagg", message }];
}

export const SERVER_MESSAGES = Object.freeze({
  welcome,
  assign,
  ack,
  credit,
  cancel,
  error,
  pong,
  round_invite,
  secagg_keys: secagg,
  secagg_ciphertexts: secagg,
  secagg_unmask: secagg,
  secagg_abort: secagg,
});
