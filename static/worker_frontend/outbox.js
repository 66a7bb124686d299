// Outbox: every finished result stays here until the server acknowledges it, and is sent again
// after each reconnect (the session decides when). Kept in memory and, when a Storage is given
// (the page passes sessionStorage), mirrored there so a reload in the same tab keeps finished
// work. Storage failures (quota, private browsing) are ignored: memory still holds everything.
import { base64ToBytes, bytesToBase64, isUuid } from "./protocol.js";

export const MAX_STORED_BYTES = 4 * 1024 * 1024;

export class Outbox {
  /** @param {{storage?: Storage|null, key?: string, maxStoredBytes?: number}} options */
  constructor({ storage = null, key = "ccgsc.outbox", maxStoredBytes = MAX_STORED_BYTES } = {}) {
    this.storage = storage;
    this.key = key;
    this.maxStoredBytes = maxStoredBytes;
    this.entries = new Map(); // assignment -> {assignment, frame: Uint8Array, addedAt}
    this.load();
  }

  get size() {
    return this.entries.size;
  }

  has(assignment) {
    return this.entries.has(assignment);
  }

  /** The frame held for an assignment, or null. */
  get(assignment) {
    return this.entries.get(assignment)?.frame ?? null;
  }

  /** Keep a result frame until its `ack`. Adding the same assignment again replaces it. */
  add(assignment, frame, now = Date.now()) {
    const bytes = frame instanceof Uint8Array ? frame : new Uint8Array(frame);
    this.entries.delete(assignment);
    this.entries.set(assignment, { assignment, frame: bytes, addedAt: now });
    this.save();
  }

  /** Remove an acknowledged result (any ack status). Returns whether it was held. */
  ack(assignment) {
    const had = this.entries.delete(assignment);
    if (had) this.save();
    return had;
  }

  /** Frames to (re)send, oldest first: `[{assignment, frame}]`. */
  pending() {
    return [...this.entries.values()].map(({ assignment, frame }) => ({ assignment, frame }));
  }

  clear() {
    this.entries.clear();
    this.save();
  }

  save() {
    if (!this.storage) return;
    try {
      const list = [];
      let total = 0;
      for (const entry of this.entries.values()) {
        total += entry.frame.length;
        if (total > this.maxStoredBytes) break; // the rest stays in memory only
        list.push({ a: entry.assignment, f: bytesToBase64(entry.frame), t: entry.addedAt });
      }
      if (list.length) this.storage.setItem(this.key, JSON.stringify(list));
      else this.storage.removeItem(this.key);
    } catch {
      /* quota exceeded or storage disabled: memory still holds everything */
    }
  }

  load() {
    if (!this.storage) return;
    try {
      const raw = this.storage.getItem(this.key);
      if (!raw) return;
      for (const item of JSON.parse(raw)) {
        if (isUuid(item.a) && typeof item.f === "string") {
          this.entries.set(item.a, { assignment: item.a, frame: base64ToBytes(item.f), addedAt: item.t || 0 });
        }
      }
    } catch {
      /* a corrupt entry: start empty */
    }
  }
}

/**
 * `window.localStorage` / `sessionStorage` behind calls that never throw (private browsing,
 * disabled storage, sandboxed frames); `raw` is the Storage itself, or null when unusable.
 */
export function safeStorage(kind, scope = globalThis) {
  let s = null;
  try {
    s = scope[kind];
    const probe = "ccgsc.probe";
    s.setItem(probe, "1");
    s.removeItem(probe);
  } catch {
    s = null;
  }
  const attempt = (fn, fallback = null) => {
    try {
      return s ? fn(s) : fallback;
    } catch {
      return fallback;
    }
  };
  return {
    raw: s,
    get: (key) => attempt((st) => st.getItem(key)),
    set: (key, value) => attempt((st) => st.setItem(key, value)),
    remove: (key) => attempt((st) => st.removeItem(key)),
  };
}

/** A JSON object from storage, or {} when missing or corrupt. */
export function readJson(text) {
  try {
    const value = JSON.parse(text || "{}");
    return value && typeof value === "object" && !Array.isArray(value) ? value : {};
  } catch {
    return {};
  }
}
