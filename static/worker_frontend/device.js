// What the device can lend and when it should not: cores, memory, SIMD, battery/charging and a
// metered connection. No DOM: the page asks for capabilities and hears about pause reasons.
import { MAX_SLOTS, defaultCores, isMetered } from "./protocol.js";
import { simdSupported } from "./kernel-runtime.js";
import { readJson } from "./outbox.js";

/** Cores this device reports, within the protocol's slot limit. */
export function hardwareCores(nav = globalThis.navigator) {
  return Math.min(MAX_SLOTS, Math.max(1, nav?.hardwareConcurrency || 1));
}

/** The cores option: a saved choice when still valid, else all but one. */
export function chosenCores(saved, hardware) {
  return Number.isInteger(saved) && saved >= 1 && saved <= hardware ? saved : defaultCores(hardware);
}

/** The contributor's options saved in this browser: {cores, onlyCharging, pauseMetered, paused}. */
export function loadOptions(storage, key, hardware) {
  const stored = readJson(storage.get(key));
  return {
    cores: chosenCores(stored.cores, hardware),
    onlyCharging: stored.onlyCharging === true,
    pauseMetered: stored.pauseMetered === true,
    paused: stored.paused === true,
  };
}

export function saveOptions(storage, key, options) {
  storage.set(key, JSON.stringify(options));
}

/**
 * Battery and network signals turned into pause reasons ("battery", "metered") according to the
 * contributor's options. `onChange(reason, paused)` fires for every reason whose state changed.
 */
export class Device {
  constructor({ nav = globalThis.navigator, onChange = () => {} } = {}) {
    this.nav = nav;
    this.onChange = onChange;
    this.battery = null;
    this.connection = nav?.connection || null;
    this.options = { onlyCharging: false, pauseMetered: false };
    this.reasons = new Set();
  }

  /** Whether the browser reports battery status / the connection type (options make sense). */
  get supports() {
    return { battery: !!this.battery, connection: !!this.connection };
  }

  /** Listen to charging and connection changes; resolves once the battery is known. */
  async watch() {
    if (typeof this.nav?.getBattery === "function") {
      try {
        this.battery = await this.nav.getBattery();
        this.battery.addEventListener("chargingchange", () => this.evaluate());
      } catch {
        this.battery = null;
      }
    }
    if (this.connection && typeof this.connection.addEventListener === "function") {
      this.connection.addEventListener("change", () => this.evaluate());
    }
    this.evaluate();
  }

  /** Apply the contributor's options ({onlyCharging, pauseMetered}) and re-evaluate. */
  setOptions(options) {
    this.options = { ...this.options, ...options };
    this.evaluate();
  }

  evaluate() {
    const wanted = new Map([
      ["battery", !!(this.options.onlyCharging && this.battery && !this.battery.charging)],
      ["metered", !!(this.options.pauseMetered && this.connection && isMetered(this.connection))],
    ]);
    for (const [reason, paused] of wanted) {
      if (paused === this.reasons.has(reason)) continue;
      if (paused) this.reasons.add(reason);
      else this.reasons.delete(reason);
      this.onChange(reason, paused);
    }
  }

  /** What `hello` reports: cores, memory, SIMD, battery power and a metered connection. */
  capabilities() {
    const caps = { cores: hardwareCores(this.nav), simd: simdSupported() };
    if (Number.isFinite(this.nav?.deviceMemory)) caps.memory_mb = Math.round(this.nav.deviceMemory * 1024);
    if (this.battery) caps.battery_powered = !this.battery.charging;
    if (this.connection) caps.metered = isMetered(this.connection);
    return caps;
  }
}

/** Why this browser cannot run tasks, or "" when it can. */
export function unsupportedReason(scope = globalThis) {
  if (typeof scope.WebAssembly !== "object") return "This browser cannot run WebAssembly, so it cannot run tasks.";
  if (typeof scope.Worker !== "function") return "This browser does not support Web Workers, so it cannot run tasks.";
  if (typeof scope.WebSocket !== "function") return "This browser does not support WebSockets.";
  if (!scope.isSecureContext || !scope.crypto?.subtle) {
    return "Tasks can only run on a secure (HTTPS) page: the browser withholds the cryptography needed to check kernels.";
  }
  return "";
}
