// The contribute page: wires the session (what to do), the connection (WebSocket), the kernel
// pool (one Web Worker per lent core), FL rounds (rounds.js: training.js with a Web Worker of
// their own), the device signals (battery, metered network) and the view (DOM).
// Protocol: docs/protocol.md; the modules: docs/worker-page.md.
import { Backoff, CLOSE, fatalCloseReason, helloMessage, isUuid, pingMessage, resolveKernelUrl, websocketUrl } from "./protocol.js";
import { Connection, obtainToken } from "./connection.js";
import { Device, hardwareCores, loadOptions, saveOptions, unsupportedReason } from "./device.js";
import { Outbox, readJson, safeStorage } from "./outbox.js";
import { Clock, KernelPool } from "./pool.js";
import { PHASE, Session } from "./session.js";
import { RoundRunner } from "./rounds.js";
import { View } from "./view.js";
import { mountLocalData } from "./local-data-view.js";

const KEYS = {
  token: "ccgsc.workerToken",
  contributor: "ccgsc.contributorId",
  options: "ccgsc.workerOptions",
  workerId: "ccgsc.workerId",
  joined: "ccgsc.joined",
  outbox: "ccgsc.outbox",
  stats: "ccgsc.sessionStats",
};
const PING_IDLE_MS = 25_000;
const HEARTBEAT_FLOOR_MS = 1000;
const PAUSE_ORDER = ["user", "battery", "metered"];

const local = safeStorage("localStorage");
const tab = safeStorage("sessionStorage");
const root = document.getElementById("ccgsc-worker");
const cfg = {
  wsPath: root.dataset.wsPath || "/ws/worker/",
  anonymousTokenUrl: root.dataset.anonymousTokenUrl || "",
  userToken: root.dataset.userToken || "",
  csrfToken: root.dataset.csrfToken || "",
  kernelWorkerUrl: root.dataset.kernelWorkerUrl || new URL("./kernel-worker.js", import.meta.url).href,
};
const hardware = hardwareCores();
const options = loadOptions(local, KEYS.options, hardware);
const saved = readJson(tab.get(KEYS.stats));
const page = {
  joined: false,
  fatal: null,
  lastError: null,
  offline: false,
  waitingUntil: 0, // when a back-off delay ends (0: not waiting)
  token: null,
  anonymous: !cfg.userToken,
  contributorId: local.get(KEYS.contributor),
  errors: Number.isFinite(saved.page?.errors) ? saved.page.errors : 0,
  resultsSent: Number.isFinite(saved.page?.resultsSent) ? saved.page.resultsSent : 0,
  connectTimer: null,
  countdown: null,
  running: new Map(), // assignment id -> decoded task, while the pool has it
  lastRound: null, // the last round's info with its outcome and message
  roundOutcomes: {}, // outcome code -> rounds that ended with it
};

const device = new Device({ onChange: (reason, paused) => apply(paused ? session.pause(reason) : session.resume(reason)) });
const session = new Session({
  concurrency: options.cores,
  buildHello: (slots, resume) =>
    helloMessage({ token: page.token, userAgent: navigator.userAgent, capabilities: device.capabilities(), slots, resume }),
  backoff: new Backoff(),
  outbox: new Outbox({ storage: tab.raw, key: KEYS.outbox }),
  workerId: tab.get(KEYS.workerId),
  heartbeatFloorMs: HEARTBEAT_FLOOR_MS,
  counters: saved.session,
});
if (options.paused) session.pause("user");
const pool = new KernelPool({
  workerUrl: cfg.kernelWorkerUrl,
  onStage: () => view.render(),
  onDone: (task, { output, sha256, elapsedMs }) => apply(session.finished(task.assignment, output, sha256, elapsedMs)),
  onFailed: (task, code, message) => apply(session.failed(task.assignment, code, message)),
  onProblem: (text) => recordError(text),
});
const rounds = new RoundRunner({
  workerUrl: cfg.kernelWorkerUrl,
  origin: window.location.origin,
  onProgress: () => view.render(),
  onFinished: roundFinished,
  send: (message) => connection.sendJson(message),
  onProblem: (text) => recordError(text),
});
const clock = new Clock({ workerUrl: cfg.kernelWorkerUrl, onTick: heartbeat });
const connection = new Connection({
  onOpen: () => apply(session.opened()),
  onMessage: (data) => apply(session.message(data)),
  onClose: (event) => {
    if (event.code === CLOSE.RATE_LIMITED) recordError("The server closed the connection: too many messages.");
    else if (event.code === CLOSE.TOO_LARGE) recordError("The server closed the connection: a message was too large.");
    apply(session.closed(event.code, event.reason));
  },
  onSent: () => (page.resultsSent += 1),
});
const view = new View(root, model);

// -- the session's effects ------------------------------------------------------------------

function apply(effects) {
  for (const effect of effects) {
    switch (effect.do) {
      case "send":
        connection.sendJson(effect.message);
        break;
      case "send_result": {
        const frame = session.outbox.get(effect.assignment);
        if (frame) connection.sendResult(frame, effect.assignment);
        break;
      }
      case "run":
        runTask(effect.assignment);
        break;
      case "cancel":
        page.running.delete(effect.assignment);
        pool.cancel(effect.assignment);
        break;
      case "connect":
        scheduleConnect(effect.delay_ms);
        break;
      case "heartbeat":
        clock.set(effect.interval_ms);
        break;
      case "close":
        connection.close(1000, "leaving");
        break;
      case "end":
        onEnd(effect);
        break;
      case "train":
        rounds.start(effect.invite, { token: page.token, capabilities: device.capabilities() });
        break;
      case "secagg":
        rounds.secagg(effect.message);
        break;
      case "notify":
        onNotify(effect);
        break;
      default:
        break;
    }
  }
  tab.set(KEYS.stats, JSON.stringify({ session: session.counters, page: { errors: page.errors, resultsSent: page.resultsSent } }));
  view.render();
}

function onNotify(note) {
  switch (note.event) {
    case "welcome":
      if (isUuid(note.worker)) tab.set(KEYS.workerId, note.worker);
      if (isUuid(note.contributor)) {
        page.contributorId = note.contributor;
        if (page.anonymous) local.set(KEYS.contributor, note.contributor);
      }
      connection.welcomed(note.limits?.messages_per_second);
      break;
    case "failed": {
      const task = page.running.get(note.assignment);
      const name = task ? `${task.kernel.name}${task.task !== null ? ` task ${task.task}` : ""}` : "task";
      recordError(`${name}: ${note.message || note.code}`);
      break;
    }
    case "bad_message":
      recordError(`Unreadable message from the server: ${note.error}`);
      break;
    case "server_error":
      recordError(`Server: ${note.message || note.code || "error"}` + (note.ref ? ` (${note.ref})` : ""));
      break;
    default:
      break;
  }
  if (["completed", "failed", "discarded", "dropped"].includes(note.event)) page.running.delete(note.assignment);
}

function onEnd({ reason, code }) {
  stopConnecting();
  pool.teardown();
  rounds.stop();
  clock.stop();
  page.running.clear();
  page.joined = false;
  tab.remove(KEYS.joined);
  if (reason === "requested") return;
  if (code === CLOSE.UNAUTHORIZED && page.anonymous) local.remove(KEYS.token);
  page.fatal = fatalCloseReason(code);
  recordError(page.fatal);
}

function runTask(id) {
  const task = session.assignment(id);
  let url;
  try {
    url = resolveKernelUrl(task.kernel.url, window.location.href);
  } catch (err) {
    apply(session.failed(id, "kernel_rejected", err.message));
    return;
  }
  page.running.set(id, task);
  pool.run({ ...task, kernel: { ...task.kernel, url } });
}

// -- FL rounds --------------------------------------------------------------------------------

/** A round ended: remember how, list an error under Problems, and tell the session. */
function roundFinished(info, code, message) {
  page.lastRound = { ...info, outcome: code, message };
  page.roundOutcomes[code] = (page.roundOutcomes[code] || 0) + 1;
  if (!["uploaded", "late", "cancelled"].includes(code)) recordError(`Training round ${info.round}: ${message || code}`);
  apply(session.roundFinished(info.participation, code, message));
}

function heartbeat() {
  apply(session.tick());
  if (session.connected && Date.now() - connection.lastSentAt >= PING_IDLE_MS) connection.sendJson(pingMessage());
}

// -- connecting -----------------------------------------------------------------------------

function stopConnecting() {
  clearTimeout(page.connectTimer);
  clearInterval(page.countdown);
  page.connectTimer = page.countdown = null;
  page.waitingUntil = 0;
}

function scheduleConnect(delayMs) {
  stopConnecting();
  if (!delayMs) {
    connectNow();
    return;
  }
  page.waitingUntil = Date.now() + delayMs;
  page.connectTimer = setTimeout(connectNow, delayMs);
  page.countdown = setInterval(() => view.render(), 1000);
}

async function connectNow() {
  stopConnecting();
  if (!page.joined || session.phase !== PHASE.CONNECTING || connection.ws) return;
  page.offline = navigator.onLine === false;
  if (page.offline) return view.render(); // the "online" event connects
  let identity;
  try {
    identity = await obtainToken({ userToken: cfg.userToken, anonymousTokenUrl: cfg.anonymousTokenUrl, csrf: cfg.csrfToken, storage: local, key: KEYS.token });
  } catch (err) {
    recordError(err.message);
    if (err.retryable) apply(session.closed(null, err.message));
    else leave();
    return undefined;
  }
  if (!page.joined || session.phase !== PHASE.CONNECTING || connection.ws) return undefined;
  page.token = identity.token;
  page.anonymous = identity.anonymous;
  if (isUuid(identity.contributor)) {
    page.contributorId = identity.contributor;
    local.set(KEYS.contributor, identity.contributor);
  }
  pool.resize(options.cores);
  pool.setToken(page.token);
  connection.open(websocketUrl(cfg.wsPath, window.location));
  return view.render();
}

// -- controls -------------------------------------------------------------------------------

function join() {
  if (page.joined || session.phase === PHASE.STOPPED) return;
  page.joined = true;
  page.fatal = null;
  tab.set(KEYS.joined, "1");
  session.backoff.reset();
  apply(session.start());
}

function leave() {
  page.joined = false;
  tab.remove(KEYS.joined);
  apply(session.stop({ abandon: true }));
  onEnd({ reason: "requested", code: null });
  view.render();
}

function setCores(n) {
  if (!Number.isInteger(n) || n < 1 || n > hardware) return;
  options.cores = n;
  saveOptions(local, KEYS.options, options);
  if (page.joined) pool.resize(n);
  apply(session.setConcurrency(n));
}

function setUserPaused(paused) {
  options.paused = paused;
  saveOptions(local, KEYS.options, options);
  apply(paused ? session.pause("user") : session.resume("user"));
}

function recordError(text) {
  page.lastError = text;
  page.errors += 1;
  view.recordError(text);
}

// -- what the view shows, and what tests read ------------------------------------------------

function connectionState() {
  if (session.phase === PHASE.STOPPED) return "stopped";
  if (!page.joined) return "offline";
  if (session.connected) return session.desiredSlots ? "connected" : "paused";
  if (page.offline) return "offline";
  return page.waitingUntil ? "reconnecting" : "connecting";
}

function pauseReasons() {
  return PAUSE_ORDER.filter((reason) => session.pauseReasons.has(reason));
}

function model() {
  const c = session.counters;
  return {
    connection: connectionState(),
    joined: page.joined,
    reconnectAt: page.waitingUntil,
    pauseReasons: pauseReasons(),
    userPaused: session.pauseReasons.has("user"),
    cores: options.cores,
    hardwareCores: hardware,
    outbox: session.outbox.size,
    tasksCompleted: c.tasks_completed,
    resultsAcked: c.results_acked,
    creditsValidated: c.validated,
    creditsWorkUnits: c.work_units,
    errors: page.errors,
    slots: pool.slots,
    estimate: (busy) => pool.estimate(busy),
    rounds: rounds.active,
    lastRound: page.lastRound,
    fatal: page.fatal,
  };
}

window.ccgscWorker = Object.freeze({
  state() {
    const c = session.counters;
    const queued = [...session.tasks.values()].filter((s) => s === "queued").length;
    return {
      connection: connectionState(),
      joined: page.joined,
      welcomed: session.connected,
      paused: session.desiredSlots === 0,
      pauseReasons: pauseReasons(),
      workerId: session.workerId,
      contributorId: page.contributorId,
      cores: options.cores,
      capacity: session.sentSlots,
      running: pool.running,
      activity: pool.slots.map((s) =>
        s.busy ? { assignment: s.busy.task.assignment, kernel: s.busy.task.kernel.name, task: s.busy.task.task, stage: s.busy.stage } : null,
      ),
      queued: queued + pool.waiting.length,
      outbox: session.outbox.size,
      tasksCompleted: c.tasks_completed,
      tasksFailed: c.errors,
      resultsSent: page.resultsSent,
      resultsAcked: c.results_acked,
      creditsValidated: c.validated,
      creditsWorkUnits: c.work_units,
      errors: page.errors,
      lastError: page.lastError,
      reconnects: c.reconnects,
      reconnectInMs: connectionState() === "reconnecting" ? Math.max(0, page.waitingUntil - Date.now()) : null,
      rounds: rounds.active,
      lastRound: page.lastRound && { ...page.lastRound },
      roundOutcomes: { ...page.roundOutcomes },
      fatal: page.fatal,
    };
  },
});

// -- start ----------------------------------------------------------------------------------

view.setOptions({ hardwareCores: hardware, ...options });
view.bind({
  join,
  leave,
  pause: () => setUserPaused(true),
  resume: () => setUserPaused(false),
  cores: setCores,
  charging: (on) => {
    options.onlyCharging = on;
    saveOptions(local, KEYS.options, options);
    device.setOptions({ onlyCharging: on });
  },
  metered: (on) => {
    options.pauseMetered = on;
    saveOptions(local, KEYS.options, options);
    device.setOptions({ pauseMetered: on });
  },
});
window.addEventListener("online", () => {
  if (page.joined && session.phase === PHASE.CONNECTING && !connection.ws) {
    session.backoff.reset();
    connectNow();
  }
});
window.addEventListener("offline", () => view.render());
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") view.render();
});
const reason = unsupportedReason(window);
view.setUnsupported(reason);
mountLocalData(document);
device.setOptions({ onlyCharging: options.onlyCharging, pauseMetered: options.pauseMetered });
device.watch().finally(() => {
  view.setDeviceSupport(device.supports);
  // A reload within the same tab session keeps contributing (and delivers kept results).
  if (!reason && tab.get(KEYS.joined) === "1") join();
});
