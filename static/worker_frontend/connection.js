// The page's connection: the worker token, and one WebSocket with a rate-limited send queue and
// open/welcome timeouts. What to send and when to reconnect is the session's business.
import { TokenBucket } from "./protocol.js";

export const CONNECT_TIMEOUT_MS = 15_000; // socket created → open
export const HELLO_TIMEOUT_MS = 15_000; // socket open → welcome

export class TokenError extends Error {
  constructor(message, retryable) {
    super(message);
    this.retryable = retryable;
  }
}

function csrfToken(fallback) {
  const cookies = typeof document === "undefined" ? "" : document.cookie;
  const match = cookies.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : fallback;
}

/**
 * The worker token: the signed-in user's, else one kept in local storage, else a new anonymous
 * one from the server (kept for next time). Resolves to {token, anonymous, contributor}.
 */
export async function obtainToken({ userToken, anonymousTokenUrl, csrf, storage, key }) {
  if (userToken) return { token: userToken, anonymous: false, contributor: null };
  const stored = storage.get(key);
  if (stored) return { token: stored, anonymous: true, contributor: null };
  if (!anonymousTokenUrl) throw new TokenError("No way to get a worker token on this page.", false);
  const headers = { Accept: "application/json" };
  const csrfValue = csrfToken(csrf);
  if (csrfValue) headers["X-CSRFToken"] = csrfValue;
  let response;
  try {
    response = await fetch(anonymousTokenUrl, { method: "POST", headers, credentials: "same-origin" });
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
  storage.set(key, body.token);
  return { token: body.token, anonymous: true, contributor: body.contributor ?? null };
}

/**
 * One WebSocket at a time. Events of a socket that was replaced or closed by us are ignored.
 * Sends wait in a queue drained under a token bucket, so the page stays below the server's
 * message rate; a socket that does not open, or is not welcomed, in time is closed.
 */
export class Connection {
  constructor({ onOpen, onMessage, onClose, onSent = () => {} }) {
    this.handlers = { onOpen, onMessage, onClose, onSent };
    this.ws = null;
    this.queue = [];
    this.bucket = new TokenBucket({ rate: 40, burst: 80 });
    this.timers = { open: null, hello: null, drain: null };
    this.lastSentAt = 0;
  }

  get isOpen() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  open(url) {
    this.close(1000, "replaced");
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    this.ws = socket;
    this.timers.open = setTimeout(() => {
      if (this.ws === socket && socket.readyState !== WebSocket.OPEN) socket.close();
    }, CONNECT_TIMEOUT_MS);
    socket.onopen = () => {
      if (this.ws !== socket) return;
      this.clear("open");
      this.timers.hello = setTimeout(() => {
        if (this.ws === socket) socket.close(4000, "no welcome");
      }, HELLO_TIMEOUT_MS);
      this.handlers.onOpen();
    };
    socket.onmessage = (event) => {
      if (this.ws === socket) this.handlers.onMessage(event.data);
    };
    socket.onclose = (event) => {
      if (this.ws !== socket) return;
      this.reset();
      this.handlers.onClose(event);
    };
    socket.onerror = () => {
      /* a close event follows */
    };
  }

  /** The welcome arrived: no more hello timeout; keep under 80 % of the server's rate. */
  welcomed(messagesPerSecond) {
    this.clear("hello");
    if (Number.isFinite(messagesPerSecond) && messagesPerSecond > 0) {
      const rate = Math.max(1, Math.floor(messagesPerSecond * 0.8));
      this.bucket = new TokenBucket({ rate, burst: rate * 2 });
    }
  }

  sendJson(message) {
    return this.enqueue(JSON.stringify(message), null);
  }

  sendResult(frame, assignment) {
    return this.enqueue(frame, assignment);
  }

  /** Close on purpose: the close event of this socket is not reported. */
  close(code = 1000, reason = "leaving") {
    const socket = this.ws;
    this.reset();
    if (socket) socket.close(code, reason);
  }

  // -- internals -------------------------------------------------------------------------

  reset() {
    this.ws = null;
    this.queue.length = 0;
    for (const name of Object.keys(this.timers)) this.clear(name);
  }

  clear(name) {
    if (this.timers[name]) clearTimeout(this.timers[name]);
    this.timers[name] = null;
  }

  enqueue(data, resultAssignment) {
    if (!this.isOpen) return false;
    this.queue.push({ data, resultAssignment });
    this.drain();
    return true;
  }

  drain() {
    this.clear("drain");
    while (this.queue.length && this.isOpen) {
      if (!this.bucket.tryTake()) {
        this.timers.drain = setTimeout(() => this.drain(), Math.max(5, this.bucket.waitMs()));
        return;
      }
      const item = this.queue.shift();
      this.ws.send(item.data);
      this.lastSentAt = Date.now();
      if (item.resultAssignment) this.handlers.onSent(item.resultAssignment);
    }
  }
}
