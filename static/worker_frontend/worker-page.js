// The contribute page: one WebSocket to the worker endpoint, one module Web Worker per lent core.
// Protocol: docs/protocol.md. Pure pieces (messages, frames, outbox, back-off) live in protocol.js.
import {
  Backoff,
  CLOSE,
  Outbox,
  ProtocolError,
  TokenBucket,
  capacityMessage,
  decodeAssign,
  defaultCores,
  encodeInput,
  encodeResultFrame,
  errorMessage,
  fatalCloseReason,
  helloMessage,
  isMetered,
  isUuid,
  parseServerMessage,
  pingMessage,
  progressMessage,
  resolveKernelUrl,
  websocketUrl,
  MAX_RESULT_BYTES,
  MAX_SLOTS,
} from "./protocol.js";
import { simdSupported } from "./kernel-runtime.js";

const KEYS = {
  token: "ccgsc.workerToken",
  contributor: "ccgsc.contributorId",
  options: "ccgsc.workerOptions",
  workerId: "ccgsc.workerId",
  joined: "ccgsc.joined",
  outbox: "ccgsc.outbox",
  stats: "ccgsc.sessionStats",
};
const HELLO_TIMEOUT_MS = 15_000; // socket open → welcome
const CONNECT_TIMEOUT_MS = 15_000; // socket created → open
const TASK_TIMEOUT_MS = 15 * 60_000; // a task running longer than this is reported as `timeout`
const PING_IDLE_MS = 25_000;
const MAX_ERRORS_SHOWN = 8;

// ---------------------------------------------------------------------------------------------
// Storage that never throws (private browsing, disabled storage, sandboxed frames).

function safeStorage(kind) {
  let s = null;
  try {
    s = window[kind];
    const probe = "ccgsc.probe";
    s.setItem(probe, "1");
    s.removeItem(probe);
  } catch {
    s = null;
  }
  return {
    raw: s,
    get(key) {
      try {
        return s ? s.getItem(key) : null;
      } catch {
        return null;
      }
    },
    set(key, value) {
      try {
        if (s) s.setItem(key, value);
      } catch {
        /* quota */
      }
    },
    remove(key) {
      try {
        if (s) s.removeItem(key);
      } catch {
        /* ignore */
      }
    },
  };
}
const local = safeStorage("localStorage");
const session = safeStorage("sessionStorage");

// ---------------------------------------------------------------------------------------------
// Page configuration and elements.

const root = document.getElementById("ccgsc-worker");
const cfg = {
  wsPath: root.dataset.wsPath || "/ws/worker/",
  anonymousTokenUrl: root.dataset.anonymousTokenUrl || "",
  userToken: root.dataset.userToken || "",
  csrfToken: root.dataset.csrfToken || "",
  kernelWorkerUrl: root.dataset.kernelWorkerUrl || new URL("./kernel-worker.js", import.meta.url).href,
};
const $ = (id) => document.getElementById(id);
const el = {
  connection: $("wf-connection"),
  countdown: $("wf-countdown"),
  detail: $("wf-status-detail"),
  join: $("wf-join"),
  leave: $("wf-leave"),
  pause: $("wf-pause"),
  resume: $("wf-resume"),
  cores: $("wf-cores"),
  coreCount: $("wf-core-count"),
  charging: $("wf-charging"),
  chargingField: $("wf-charging-field"),
  chargingNote: $("wf-charging-note"),
  metered: $("wf-metered"),
  meteredField: $("wf-metered-field"),
  meteredNote: $("wf-metered-note"),
  tasksCompleted: $("wf-tasks-completed"),
  resultsAcked: $("wf-results-acked"),
  creditsValidated: $("wf-credits-validated"),
  creditsWorkUnits: $("wf-credits-work-units"),
  outbox: $("wf-outbox"),
  errorsCount: $("wf-errors-count"),
  slots: $("wf-slots"),
  idle: $("wf-idle"),
  errorsCard: $("wf-errors-card"),
  errors: $("wf-errors"),
  fatal: $("wf-fatal"),
  fatalText: $("wf-fatal-text"),
  unsupported: $("wf-unsupported"),
};

const hardwareCores = Math.min(MAX_SLOTS, Math.max(1, navigator.hardwareConcurrency || 1));

// ---------------------------------------------------------------------------------------------
// State.

const options = loadOptions();
const state = {
  joined: false,
  connection: "offline", // offline | connecting | connected | paused | reconnecting | stopped
  welcomed: false,
  userPaused: options.paused === true,
  batteryPause: false,
  meteredPause: false,
  workerId: session.get(KEYS.workerId),
  contributorId: local.get(KEYS.contributor),
  tokenIsAnonymous: !cfg.userToken,
  heartbeatMs: 10_000,
  maxResultBytes: MAX_RESULT_BYTES,
  sentCapacity: null,
  reconnectAt: 0,
  lastSentAt: 0,
  fatal: null,
  lastError: null,
  counters: loadCounters(),
};
const outbox = new Outbox({ storage: session.raw, key: KEYS.outbox });
const backoff = new Backoff();
let bucket = new TokenBucket({ rate: 40, burst: 80 });
let token = null;
let ws = null;
let battery = null;
const connection = navigator.connection || null;

const slots = []; // {index, worker, busy: null | {id, task, startedAt, stage, watchdog}, retiring}
const queue = []; // decoded assignments waiting for a free slot
const held = new Map(); // assignment id -> decoded assignment (queued or running): heartbeats
const rates = new Map(); // kernel sha256 -> work units per ms, learnt from finished tasks
const sendQueue = [];
const timers = { connect: null, hello: null, open: null, countdown: null, drain: null, fallbackClock: null };
let clockWorker = null;
let taskSeq = 0;

function loadOptions() {
  let saved = {};
  try {
    saved = JSON.parse(local.get(KEYS.options) || "{}") || {};
  } catch {
    saved = {};
  }
  const cores = Number.isInteger(saved.cores) && saved.cores >= 1 && saved.cores <= hardwareCores
    ? saved.cores
    : defaultCores(hardwareCores);
  return { cores, onlyCharging: saved.onlyCharging === true, pauseMetered: saved.pauseMetered === true, paused: saved.paused === true };
}

function saveOptions() {
  local.set(KEYS.options, JSON.stringify({ ...options, paused: state.userPaused }));
}

function loadCounters() {
  const zero = { tasksCompleted: 0, tasksFailed: 0, resultsSent: 0, resultsAcked: 0, creditsValidated: 0, creditsWorkUnits: 0, errors: 0, reconnects: 0 };
  try {
    const saved = JSON.parse(session.get(KEYS.stats) || "{}");
    for (const key of Object.keys(zero)) if (Number.isFinite(saved[key])) zero[key] = saved[key];
  } catch {
    /* start at zero */
  }
  return zero;
}

function bump(name, by = 1) {
  state.counters[name] += by;
  session.set(KEYS.stats, JSON.stringify(state.counters));
}

function pauseReasons() {
  const reasons = [];
  if (state.userPaused) reasons.push("user");
  if (state.batteryPause) reasons.push("battery");
  if (state.meteredPause) reasons.push("metered");
  return reasons;
}

function desiredSlots() {
  return pauseReasons().length ? 0 : options.cores;
}

// ---------------------------------------------------------------------------------------------
// Rendering (batched to one update per frame).

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderNow();
  });
}

const STATE_LABELS = {
  offline: "Not connected",
  connecting: "Connecting…",
  connected: "Connected — working",
  paused: "Connected — paused",
  reconnecting: "Connection lost — reconnecting",
  stopped: "Stopped",
};

function renderNow() {
  const c = state.counters;
  const label = state.connection === "offline" && state.joined ? "Offline — waiting for the network" : STATE_LABELS[state.connection];
  if (el.connection.textContent !== label) el.connection.textContent = label;
  el.connection.dataset.state = state.connection;
  root.dataset.connection = state.connection;

  const waitS = Math.max(0, Math.ceil((state.reconnectAt - Date.now()) / 1000));
  el.countdown.textContent = state.connection === "reconnecting" ? `in ${waitS} s` : "";

  const reasons = pauseReasons();
  let detail = "";
  if (state.connection === "paused" || (state.joined && reasons.length && state.connection !== "stopped")) {
    const why = [];
    if (reasons.includes("user")) why.push("you paused");
    if (reasons.includes("battery")) why.push("the device is not charging");
    if (reasons.includes("metered")) why.push("the connection is metered");
    const running = slots.filter((s) => s.busy).length;
    detail = `Paused because ${why.join(" and ")}.` + (running ? ` Finishing ${running} running task${running > 1 ? "s" : ""}, then idle.` : "");
  } else if (state.connection === "connected") {
    detail = `Lending ${options.cores} of ${hardwareCores} core${hardwareCores > 1 ? "s" : ""}. Waiting for tasks when idle is normal.`;
  } else if (!state.joined && state.connection === "offline") {
    detail = outbox.size ? `${outbox.size} finished result${outbox.size > 1 ? "s" : ""} will be sent when you join again.` : "";
  }
  if (el.detail.textContent !== detail) el.detail.textContent = detail;

  el.join.hidden = state.joined;
  el.join.disabled = state.connection === "stopped" || !!el.unsupported.textContent;
  el.leave.hidden = !state.joined;
  el.pause.hidden = !state.joined || state.userPaused;
  el.resume.hidden = !state.joined || !state.userPaused;

  el.tasksCompleted.textContent = fmt(c.tasksCompleted);
  el.resultsAcked.textContent = fmt(c.resultsAcked);
  el.creditsValidated.textContent = fmt(c.creditsValidated);
  el.creditsWorkUnits.textContent = fmt(c.creditsWorkUnits);
  el.outbox.textContent = fmt(outbox.size);
  el.errorsCount.textContent = fmt(c.errors);

  renderSlots();
  el.fatal.hidden = !state.fatal;
  if (state.fatal) el.fatalText.textContent = state.fatal;
}

const numberFormat = new Intl.NumberFormat();
function fmt(n) {
  return numberFormat.format(n);
}

function renderSlots() {
  const items = el.slots.children;
  while (items.length > slots.length) el.slots.lastElementChild.remove();
  while (items.length < slots.length) {
    const li = document.createElement("li");
    li.className = "wf-slot";
    const head = document.createElement("div");
    head.className = "wf-slot-head";
    const title = document.createElement("span");
    title.className = "wf-slot-title";
    const meta = document.createElement("span");
    meta.className = "wf-slot-meta muted";
    head.append(title, meta);
    const bar = document.createElement("progress");
    bar.className = "wf-bar";
    bar.max = 1;
    li.append(head, bar);
    el.slots.append(li);
  }
  let anyBusy = false;
  slots.forEach((slot, i) => {
    const li = items[i];
    const [title, meta] = li.firstElementChild.children;
    const bar = li.lastElementChild;
    const busy = slot.busy;
    li.dataset.busy = busy ? "true" : "false";
    if (!busy) {
      title.textContent = `Core ${i + 1}: idle`;
      meta.textContent = slot.retiring ? "stopping" : "";
      bar.hidden = true;
      return;
    }
    anyBusy = true;
    const t = busy.task;
    const elapsed = (performance.now() - busy.startedAt) / 1000;
    title.textContent = `Core ${i + 1}: ${t.kernel.name}` + (t.task !== null ? ` · task ${t.task}` : "");
    const stage = { starting: "starting", fetching: "downloading kernel", compiling: "preparing kernel", running: "running" }[busy.stage] || busy.stage;
    meta.textContent = `${stage} · ${elapsed < 10 ? elapsed.toFixed(1) : Math.round(elapsed)} s`;
    bar.hidden = false;
    const estimate = estimateFraction(busy);
    if (estimate === null) {
      bar.removeAttribute("value");
      bar.setAttribute("aria-label", `Core ${i + 1} progress: ${stage}`);
    } else {
      bar.value = estimate;
      bar.setAttribute("aria-label", `Core ${i + 1} progress: about ${Math.round(estimate * 100)}%`);
    }
  });
  el.idle.hidden = anyBusy;
  el.idle.textContent = state.joined ? (slots.length ? "Waiting for tasks." : "Starting…") : "Nothing is running.";
}

/** Progress estimate from the speed of earlier tasks of the same kernel (display only). */
function estimateFraction(busy) {
  if (busy.stage !== "running" || !busy.runStartedAt) return null;
  const rate = rates.get(busy.task.kernel.sha256);
  if (!rate || !busy.task.workUnits) return null;
  const expectedMs = busy.task.workUnits / rate;
  return Math.min(0.95, (performance.now() - busy.runStartedAt) / Math.max(1, expectedMs));
}

function setConnection(next) {
  if (state.connection !== next) {
    state.connection = next;
    render();
  }
}

function recordError(text) {
  state.lastError = text;
  bump("errors");
  const li = document.createElement("li");
  const time = document.createElement("time");
  const now = new Date();
  time.dateTime = now.toISOString();
  time.textContent = now.toLocaleTimeString();
  time.className = "muted";
  li.append(time, " ", text);
  el.errors.prepend(li);
  while (el.errors.children.length > MAX_ERRORS_SHOWN) el.errors.lastElementChild.remove();
  el.errorsCard.hidden = false;
  render();
}

// ---------------------------------------------------------------------------------------------
// Worker token.

class TokenError extends Error {
  constructor(message, retryable) {
    super(message);
    this.retryable = retryable;
  }
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : cfg.csrfToken;
}

async function obtainToken() {
  if (cfg.userToken) {
    state.tokenIsAnonymous = false;
    return cfg.userToken;
  }
  state.tokenIsAnonymous = true;
  const stored = local.get(KEYS.token);
  if (stored) return stored;
  if (!cfg.anonymousTokenUrl) throw new TokenError("No way to get a worker token on this page.", false);
  const headers = { Accept: "application/json" };
  const csrf = csrfToken();
  if (csrf) headers["X-CSRFToken"] = csrf;
  let response;
  try {
    response = await fetch(cfg.anonymousTokenUrl, { method: "POST", headers, credentials: "same-origin" });
  } catch {
    throw new TokenError("Could not reach the server for a worker token.", true);
  }
  if (!response.ok) {
    const retryable = response.status === 429 || response.status >= 500;
    throw new TokenError(`Could not get a worker token (HTTP ${response.status}).`, retryable);
  }
  const body = await response.json().catch(() => ({}));
  if (typeof body.token !== "string" || body.token.length < 10) {
    throw new TokenError("The server sent an unusable worker token.", true);
  }
  local.set(KEYS.token, body.token);
  if (isUuid(body.contributor)) {
    state.contributorId = body.contributor;
    local.set(KEYS.contributor, body.contributor);
  }
  return body.token;
}

// ---------------------------------------------------------------------------------------------
// Capabilities, battery and network.

function capabilities() {
  const caps = { cores: hardwareCores, simd: simdSupported() };
  if (Number.isFinite(navigator.deviceMemory)) caps.memory_mb = Math.round(navigator.deviceMemory * 1024);
  if (battery) caps.battery_powered = !battery.charging;
  if (connection) caps.metered = isMetered(connection);
  return caps;
}

function evaluateAutoPause() {
  state.batteryPause = !!(options.onlyCharging && battery && !battery.charging);
  state.meteredPause = !!(options.pauseMetered && connection && isMetered(connection));
  applyCapacity();
}

async function setUpDeviceSignals() {
  if (typeof navigator.getBattery === "function") {
    try {
      battery = await navigator.getBattery();
      battery.addEventListener("chargingchange", evaluateAutoPause);
    } catch {
      battery = null;
    }
  }
  el.chargingField.hidden = !battery;
  el.chargingNote.hidden = !!battery;
  el.meteredField.hidden = !connection;
  el.meteredNote.hidden = !!connection;
  if (connection && typeof connection.addEventListener === "function") {
    connection.addEventListener("change", evaluateAutoPause);
  }
  evaluateAutoPause();
}

// ---------------------------------------------------------------------------------------------
// WebSocket.

function clearTimer(name) {
  if (timers[name]) {
    clearTimeout(timers[name]);
    clearInterval(timers[name]);
    timers[name] = null;
  }
}

async function connect() {
  clearTimer("connect");
  clearTimer("countdown");
  if (!state.joined || ws) return;
  if (navigator.onLine === false) {
    setConnection("offline"); // the "online" event reconnects
    return;
  }
  setConnection("connecting");
  try {
    token = await obtainToken();
  } catch (err) {
    recordError(err.message);
    if (err.retryable) scheduleReconnect();
    else leave({ keepMessage: true });
    return;
  }
  if (!state.joined || ws) return;
  ensurePool();
  for (const slot of slots) slot.worker.postMessage({ type: "init", token });

  const socket = new WebSocket(websocketUrl(cfg.wsPath, window.location));
  socket.binaryType = "arraybuffer";
  ws = socket;
  state.welcomed = false;
  timers.open = setTimeout(() => {
    if (ws === socket && socket.readyState !== WebSocket.OPEN) socket.close();
  }, CONNECT_TIMEOUT_MS);
  socket.onopen = () => {
    if (ws !== socket) return;
    clearTimer("open");
    const slotsNow = desiredSlots();
    state.sentCapacity = slotsNow;
    sendJson(helloMessage({ token, userAgent: navigator.userAgent, capabilities: capabilities(), slots: slotsNow, resume: state.workerId }));
    timers.hello = setTimeout(() => {
      if (ws === socket && !state.welcomed) socket.close(4000, "no welcome");
    }, HELLO_TIMEOUT_MS);
  };
  socket.onmessage = (event) => {
    if (ws === socket) onMessage(event.data);
  };
  socket.onclose = (event) => {
    if (ws === socket) onClose(event);
  };
  socket.onerror = () => {
    /* a close event follows */
  };
}

function onClose(event) {
  ws = null;
  state.welcomed = false;
  state.sentCapacity = null;
  sendQueue.length = 0;
  clearTimer("hello");
  clearTimer("open");
  clearTimer("drain");
  const fatal = fatalCloseReason(event.code);
  if (fatal) {
    if (event.code === CLOSE.UNAUTHORIZED && state.tokenIsAnonymous) local.remove(KEYS.token);
    stop(fatal);
    return;
  }
  if (!state.joined) {
    setConnection("offline");
    return;
  }
  if (event.code === CLOSE.RATE_LIMITED) recordError("The server closed the connection: too many messages.");
  else if (event.code === CLOSE.TOO_LARGE) recordError("The server closed the connection: a message was too large.");
  scheduleReconnect();
}

function scheduleReconnect() {
  clearTimer("connect");
  if (!state.joined) return;
  const delay = backoff.next();
  bump("reconnects");
  state.reconnectAt = Date.now() + delay;
  setConnection("reconnecting");
  timers.connect = setTimeout(connect, delay);
  clearTimer("countdown");
  timers.countdown = setInterval(render, 1000);
}

function stop(message) {
  state.fatal = message;
  state.joined = false;
  session.remove(KEYS.joined);
  teardown();
  setConnection("stopped");
  recordError(message);
}

function sendJson(message) {
  return enqueue(JSON.stringify(message), null);
}

function enqueue(data, resultAssignment) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  sendQueue.push({ data, resultAssignment });
  drain();
  return true;
}

function drain() {
  clearTimer("drain");
  while (sendQueue.length && ws && ws.readyState === WebSocket.OPEN) {
    if (!bucket.tryTake()) {
      timers.drain = setTimeout(drain, Math.max(5, bucket.waitMs()));
      return;
    }
    const item = sendQueue.shift();
    ws.send(item.data);
    state.lastSentAt = Date.now();
    if (item.resultAssignment) {
      outbox.markSent(item.resultAssignment);
      bump("resultsSent");
    }
  }
}

function sendResult(assignment) {
  const frame = outbox.get(assignment);
  if (frame && state.welcomed) enqueue(frame, assignment);
}

function onMessage(data) {
  if (typeof data !== "string") return; // the server sends no binary frames
  let message;
  try {
    message = parseServerMessage(data);
  } catch (err) {
    recordError(`Unreadable message from the server: ${err.message}`);
    return;
  }
  switch (message.type) {
    case "welcome":
      return onWelcome(message);
    case "assign":
      return onAssign(message);
    case "ack":
      if (isUuid(message.assignment) && outbox.ack(message.assignment)) bump("resultsAcked");
      return render();
    case "credit":
      if (Number.isFinite(message.validated)) bump("creditsValidated", message.validated);
      if (Number.isFinite(message.work_units)) bump("creditsWorkUnits", message.work_units);
      return render();
    case "cancel":
      return cancelAssignment(message.assignment);
    case "error":
      return recordError(`Server: ${message.message || message.code || "error"}` + (message.ref ? ` (${message.ref})` : ""));
    case "pong":
    default:
      return undefined;
  }
}

function onWelcome(message) {
  clearTimer("hello");
  state.welcomed = true;
  backoff.reset();
  if (isUuid(message.worker)) {
    state.workerId = message.worker;
    session.set(KEYS.workerId, message.worker);
  }
  if (isUuid(message.contributor)) {
    state.contributorId = message.contributor;
    if (state.tokenIsAnonymous) local.set(KEYS.contributor, message.contributor);
  }
  if (Number.isFinite(message.heartbeat_ms) && message.heartbeat_ms > 0) state.heartbeatMs = message.heartbeat_ms;
  const limits = message.limits || {};
  if (Number.isFinite(limits.max_result_bytes)) state.maxResultBytes = Math.min(MAX_RESULT_BYTES, limits.max_result_bytes);
  if (Number.isFinite(limits.messages_per_second) && limits.messages_per_second > 0) {
    const rate = Math.max(1, Math.floor(limits.messages_per_second * 0.8));
    bucket = new TokenBucket({ rate, burst: rate * 2 });
  }
  startClock();
  setConnection(desiredSlots() ? "connected" : "paused");
  // Options may have changed while the hello was in flight.
  applyCapacity();
  // Keep held leases alive at once, then replay every unacknowledged result.
  heartbeat();
  for (const { assignment } of outbox.pending()) sendResult(assignment);
  render();
}

function onAssign(message) {
  let task;
  try {
    task = decodeAssign(message);
    task.kernel.url = resolveKernelUrl(task.kernel.url, window.location.href);
  } catch (err) {
    recordError(`Unusable task: ${err.message}`);
    if (isUuid(message.assignment)) {
      sendJson(errorMessage(message.assignment, err instanceof ProtocolError ? "kernel_rejected" : "internal", err.message));
    }
    return;
  }
  if (outbox.has(task.assignment)) {
    sendResult(task.assignment); // already finished: send it again
    return;
  }
  if (held.has(task.assignment)) return;
  held.set(task.assignment, task);
  queue.push(task);
  sendJson(progressMessage(task.assignment, 0));
  pump();
}

function cancelAssignment(assignment) {
  if (!held.has(assignment)) return;
  held.delete(assignment);
  const qi = queue.findIndex((t) => t.assignment === assignment);
  if (qi >= 0) queue.splice(qi, 1);
  const slot = slots.find((s) => s.busy && s.busy.task.assignment === assignment);
  if (slot) recycle(slot); // terminate to free the core at once
  pump();
  render();
}

function applyCapacity() {
  const wanted = desiredSlots();
  if (state.welcomed && wanted !== state.sentCapacity) {
    state.sentCapacity = wanted;
    sendJson(capacityMessage(wanted));
  }
  if (state.welcomed) setConnection(wanted ? "connected" : "paused");
  render();
}

// ---------------------------------------------------------------------------------------------
// Heartbeats and keep-alive, driven by a timer in a Web Worker (not throttled in hidden tabs).

function heartbeat() {
  if (!state.welcomed) return;
  for (const assignment of held.keys()) sendJson(progressMessage(assignment));
  if (Date.now() - state.lastSentAt >= PING_IDLE_MS) sendJson(pingMessage());
  render();
}

function startClock() {
  const interval = Math.max(1000, Math.floor(state.heartbeatMs / 2));
  stopClock();
  try {
    clockWorker = new Worker(cfg.kernelWorkerUrl, { type: "module", name: "ccgsc-clock" });
    clockWorker.onmessage = (event) => {
      if (event.data?.type === "tick") heartbeat();
    };
    clockWorker.onerror = () => {
      stopClock();
      timers.fallbackClock = setInterval(heartbeat, interval);
    };
    clockWorker.postMessage({ type: "clock", intervalMs: interval });
  } catch {
    timers.fallbackClock = setInterval(heartbeat, interval);
  }
}

function stopClock() {
  if (clockWorker) clockWorker.terminate();
  clockWorker = null;
  clearTimer("fallbackClock");
}

// ---------------------------------------------------------------------------------------------
// Kernel workers: one per lent core, one task each at a time.

function createWorker(slot) {
  const worker = new Worker(cfg.kernelWorkerUrl, { type: "module", name: `ccgsc-core-${slot.index + 1}` });
  worker.onmessage = (event) => onWorkerMessage(slot, worker, event.data || {});
  worker.onerror = (event) => {
    event.preventDefault?.();
    if (slot.worker !== worker) return;
    const busy = slot.busy;
    if (busy) {
      recycle(slot); // a fresh worker for the next task
      failTask(busy.task, "kernel_failed", `worker crashed: ${event.message || "unknown error"}`);
    } else {
      // The worker script itself failed to start: drop this core rather than retry in a loop.
      slot.retiring = true;
      retireIdle();
      recordError("A background worker could not start; running with fewer cores.");
    }
    pump();
    render();
  };
  if (token) worker.postMessage({ type: "init", token });
  return worker;
}

function ensurePool() {
  let active = slots.filter((s) => !s.retiring).length;
  while (active < options.cores) {
    const slot = { index: slots.length, worker: null, busy: null, retiring: false };
    slot.worker = createWorker(slot);
    slots.push(slot);
    active++;
  }
  for (let i = slots.length - 1; i >= 0 && active > options.cores; i--) {
    if (!slots[i].retiring) {
      slots[i].retiring = true;
      active--;
    }
  }
  retireIdle();
  pump();
  render();
}

function retireIdle() {
  for (let i = slots.length - 1; i >= 0; i--) {
    const slot = slots[i];
    if (slot.retiring && !slot.busy) {
      slot.worker.terminate();
      slots.splice(i, 1);
    }
  }
  slots.forEach((s, i) => (s.index = i));
}

function recycle(slot) {
  if (slot.busy) clearTimeout(slot.busy.watchdog);
  slot.busy = null;
  slot.worker.terminate();
  if (slot.retiring) {
    retireIdle();
  } else {
    slot.worker = createWorker(slot);
  }
}

function teardown() {
  for (const slot of slots) {
    if (slot.busy) clearTimeout(slot.busy.watchdog);
    slot.worker.terminate();
  }
  slots.length = 0;
  queue.length = 0;
  held.clear();
  stopClock();
  clearTimer("connect");
  clearTimer("countdown");
  if (ws) {
    const socket = ws;
    ws = null;
    socket.close(1000, "leaving");
  }
  state.welcomed = false;
  sendQueue.length = 0;
}

function pump() {
  for (const slot of slots) {
    if (!queue.length) break;
    if (slot.busy || slot.retiring) continue;
    startTask(slot, queue.shift());
  }
}

function startTask(slot, task) {
  let input;
  try {
    input = encodeInput(task.input.lo, task.input.hi, task.input.seed, task.input.params);
  } catch (err) {
    failTask(task, "kernel_failed", `input: ${err.message}`);
    return;
  }
  const id = ++taskSeq;
  slot.busy = { id, task, startedAt: performance.now(), runStartedAt: 0, stage: "starting", watchdog: null };
  slot.busy.watchdog = setTimeout(() => {
    if (slot.busy?.id !== id) return;
    recycle(slot);
    failTask(task, "timeout", `no result after ${TASK_TIMEOUT_MS / 60000} minutes`);
    pump();
  }, TASK_TIMEOUT_MS);
  slot.worker.postMessage(
    { type: "run", id, assignment: task.assignment, kernel: { sha256: task.kernel.sha256, url: task.kernel.url, name: task.kernel.name }, input: input.buffer },
    [input.buffer],
  );
  render();
}

function onWorkerMessage(slot, worker, msg) {
  if (slot.worker !== worker || !slot.busy || msg.id !== slot.busy.id) return;
  const busy = slot.busy;
  if (msg.type === "stage") {
    busy.stage = msg.stage;
    if (msg.stage === "running") busy.runStartedAt = performance.now();
    render();
    return;
  }
  clearTimeout(busy.watchdog);
  slot.busy = null;
  if (msg.type === "done") finishTask(busy, msg);
  else if (msg.type === "failed") failTask(busy.task, msg.code, msg.message);
  retireIdle();
  pump();
  render();
}

function finishTask(busy, msg) {
  const { task } = busy;
  if (!held.delete(task.assignment)) return; // cancelled meanwhile
  const output = new Uint8Array(msg.output);
  if (output.length > state.maxResultBytes) {
    failTask(task, "kernel_failed", `output of ${output.length} bytes exceeds the ${state.maxResultBytes}-byte result limit`);
    return;
  }
  let frame;
  try {
    frame = encodeResultFrame({ assignment: task.assignment, sha256: msg.sha256, elapsedMs: msg.elapsedMs }, output);
  } catch (err) {
    failTask(task, "internal", err.message);
    return;
  }
  if (task.workUnits && msg.elapsedMs > 0) rates.set(task.kernel.sha256, task.workUnits / msg.elapsedMs);
  outbox.add(task.assignment, frame);
  bump("tasksCompleted");
  sendResult(task.assignment);
}

function failTask(task, code, message) {
  held.delete(task.assignment);
  bump("tasksFailed");
  recordError(`${task.kernel.name}${task.task !== null ? ` task ${task.task}` : ""}: ${message || code}`);
  if (state.welcomed) sendJson(errorMessage(task.assignment, code, message));
}

// ---------------------------------------------------------------------------------------------
// Controls.

function join() {
  if (state.joined || state.connection === "stopped") return;
  state.joined = true;
  state.fatal = null;
  session.set(KEYS.joined, "1");
  backoff.reset();
  render();
  connect();
}

function leave({ keepMessage = false } = {}) {
  state.joined = false;
  session.remove(KEYS.joined);
  teardown();
  setConnection("offline");
  if (!keepMessage) render();
}

function focusAfter(button) {
  requestAnimationFrame(() => {
    if (!button.hidden) button.focus();
  });
}

function setUserPaused(paused) {
  state.userPaused = paused;
  saveOptions();
  applyCapacity();
}

function populateCores() {
  el.coreCount.textContent = String(hardwareCores);
  for (let n = 1; n <= hardwareCores; n++) {
    const option = document.createElement("option");
    option.value = String(n);
    option.textContent = n === hardwareCores ? `${n} (all)` : String(n);
    el.cores.append(option);
  }
  el.cores.value = String(options.cores);
}

function bindControls() {
  el.join.addEventListener("click", () => {
    join();
    focusAfter(el.leave);
  });
  el.leave.addEventListener("click", () => {
    leave();
    focusAfter(el.join);
  });
  el.pause.addEventListener("click", () => {
    setUserPaused(true);
    focusAfter(el.resume);
  });
  el.resume.addEventListener("click", () => {
    setUserPaused(false);
    focusAfter(el.pause);
  });
  el.cores.addEventListener("change", () => {
    const n = Number(el.cores.value);
    if (!Number.isInteger(n) || n < 1 || n > hardwareCores) return;
    options.cores = n;
    saveOptions();
    if (state.joined) ensurePool();
    applyCapacity();
  });
  el.charging.checked = options.onlyCharging;
  el.charging.addEventListener("change", () => {
    options.onlyCharging = el.charging.checked;
    saveOptions();
    evaluateAutoPause();
  });
  el.metered.checked = options.pauseMetered;
  el.metered.addEventListener("change", () => {
    options.pauseMetered = el.metered.checked;
    saveOptions();
    evaluateAutoPause();
  });
  window.addEventListener("online", () => {
    if (state.joined && !ws) {
      backoff.reset();
      connect();
    }
  });
  window.addEventListener("offline", () => render());
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") render();
  });
}

function unsupportedReason() {
  if (typeof WebAssembly !== "object") return "This browser cannot run WebAssembly, so it cannot run tasks.";
  if (typeof Worker !== "function") return "This browser does not support Web Workers, so it cannot run tasks.";
  if (typeof WebSocket !== "function") return "This browser does not support WebSockets.";
  if (!window.isSecureContext || !globalThis.crypto?.subtle) {
    return "Tasks can only run on a secure (HTTPS) page: the browser withholds the cryptography needed to check kernels.";
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Read-only hook for automated tests and support.

window.ccgscWorker = Object.freeze({
  state() {
    const c = state.counters;
    return {
      connection: state.connection,
      joined: state.joined,
      welcomed: state.welcomed,
      paused: desiredSlots() === 0,
      pauseReasons: pauseReasons(),
      workerId: state.workerId,
      contributorId: state.contributorId,
      cores: options.cores,
      capacity: state.sentCapacity,
      running: slots.filter((s) => s.busy).length,
      activity: slots.map((s) =>
        s.busy ? { assignment: s.busy.task.assignment, kernel: s.busy.task.kernel.name, task: s.busy.task.task, stage: s.busy.stage } : null,
      ),
      queued: queue.length,
      outbox: outbox.size,
      tasksCompleted: c.tasksCompleted,
      tasksFailed: c.tasksFailed,
      resultsSent: c.resultsSent,
      resultsAcked: c.resultsAcked,
      creditsValidated: c.creditsValidated,
      creditsWorkUnits: c.creditsWorkUnits,
      errors: c.errors,
      lastError: state.lastError,
      reconnects: c.reconnects,
      reconnectInMs: state.connection === "reconnecting" ? Math.max(0, state.reconnectAt - Date.now()) : null,
      fatal: state.fatal,
    };
  },
});

// ---------------------------------------------------------------------------------------------
// Start.

populateCores();
bindControls();
const reason = unsupportedReason();
if (reason) {
  el.unsupported.textContent = reason;
  el.unsupported.hidden = false;
}
render();
setUpDeviceSignals().finally(() => {
  // A reload within the same tab session keeps contributing (and delivers kept results).
  if (!reason && session.get(KEYS.joined) === "1") join();
});
