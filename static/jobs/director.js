// The job director: live state over /ws/jobs/<id>/, controls sent over the same socket.
// Close codes and their meaning come from the protocol definition (docs/protocol.md).
import { DEFINITION } from '../worker_frontend/protocol-defs.js';
import { createCurves } from './curves.js';
import { renderPrivacy } from './privacy.js';

const CLOSE_CODES = DEFINITION.close_codes;
const NOT_FOUND = Number(Object.keys(CLOSE_CODES).find((code) => CLOSE_CODES[code].name === 'not_found'));
const STOP_MESSAGES = {
  [NOT_FOUND]: "You are not a member of this job's tenant (or your session has ended). Live updates stopped.",
};

/** Why the page stops reconnecting after close `code`, or null when it should reconnect. */
function stopReason(code) {
  const info = CLOSE_CODES[String(code)];
  if (!info || info.reconnect) return null;
  return STOP_MESSAGES[code] ?? `Live updates stopped: ${info.meaning}.`;
}

const root = document.getElementById('director');
const $ = (id) => document.getElementById(id);
const liveState = $('live-state');
let socket = null;
let retryMs = 500;
// FL jobs: the curves (wired asynchronously, as the charting library loads) and the last data.
let updateCurves = null;
let latestFl = null;

function text(id, value) {
  const el = $(id);
  if (el) el.textContent = value ?? '—';
}

function formatEta(seconds) {
  if (seconds == null) return '—';
  if (seconds < 90) return `${seconds} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function render(state) {
  if (state.fl) {
    latestFl = state.fl;
    updateCurves?.(state.fl);
  }
  if (state.privacy) renderPrivacy(state.privacy);
  const status = $('job-status');
  status.textContent = state.status;
  status.className = `badge badge-${state.status}`;
  $('progress').setAttribute('aria-valuenow', String(state.progress_percent));
  $('progress-bar').style.width = `${state.progress_percent}%`;
  text('progress-text', `${state.progress_percent}%`);
  text('validated', state.tasks.validated);
  text('throughput', state.throughput_tasks_per_s);
  text('eta', formatEta(state.eta_s));
  for (const key of ['queued', 'open', 'validated', 'failed']) text(`t-${key}`, state.tasks[key]);
  for (const key of ['running', 'valid', 'invalid', 'errors', 'expired']) text(`r-${key}`, state.replicas[key]);
  text('result', state.result ? JSON.stringify(state.result) : '—');
  const workers = $('workers');
  workers.replaceChildren(...state.workers.map((w) => {
    const row = document.createElement('tr');
    for (const value of [w.id, w.kind, w.cores ?? '?', w.trust, w.replicas]) {
      const cell = document.createElement('td');
      cell.textContent = String(value);
      row.append(cell);
    }
    if (!w.online) row.classList.add('muted');
    return row;
  }));
  const events = $('events');
  events.replaceChildren(...state.events.map((e) => {
    const item = document.createElement('li');
    const when = new Date(e.at).toLocaleTimeString();
    item.textContent = `${when} — ${e.message}`;
    return item;
  }));
  for (const button of document.querySelectorAll('#controls [data-action]')) {
    const action = button.dataset.action;
    const allowed = {
      start: state.status === 'draft',
      pause: state.status === 'running',
      resume: state.status === 'paused',
      cancel: ['draft', 'running', 'paused', 'reducing'].includes(state.status),
    }[action];
    button.disabled = !allowed;
  }
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  socket = new WebSocket(`${scheme}://${location.host}${root.dataset.wsPath}`);
  socket.addEventListener('open', () => {
    retryMs = 500;
    liveState.textContent = 'live';
  });
  socket.addEventListener('message', (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === 'state') render(message.state);
    else if (message.type === 'error') liveState.textContent = message.message;
  });
  socket.addEventListener('close', (event) => {
    const reason = stopReason(event.code);
    if (reason) {
      liveState.textContent = reason;
      liveState.dataset.stopped = String(event.code);
      for (const button of document.querySelectorAll('#controls [data-action]')) button.disabled = true;
      return;
    }
    liveState.textContent = `reconnecting in ${Math.round(retryMs / 1000)} s`;
    setTimeout(connect, retryMs + Math.random() * 250);
    retryMs = Math.min(retryMs * 2, 30000);
  });
}

document.getElementById('controls').addEventListener('submit', (event) => {
  if (!socket || socket.readyState !== WebSocket.OPEN) return; // fall back to the form post
  event.preventDefault();
  const action = event.submitter?.value;
  if (action === 'cancel' && !window.confirm('Cancel this job? Work done so far is discarded.')) return;
  socket.send(JSON.stringify({ v: 1, type: 'control', action }));
});

render(JSON.parse(document.getElementById('initial-state').textContent));
connect();
const curvesSection = document.getElementById('fl-curves');
if (curvesSection) {
  const update = await createCurves(curvesSection);
  if (latestFl) update(latestFl);
  updateCurves = update;
}
