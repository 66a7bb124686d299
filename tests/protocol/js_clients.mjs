// Drives the browser's protocol module for tests/protocol/test_cross_clients.py.
//   node js_clients.mjs build        → JSON list of {name, text | frame_hex} built by the JS builders
//   node js_clients.mjs parse < list → JSON list of {ok, error?} for each server text frame
//   node js_clients.mjs check < list → JSON list of booleans: does {route, direction, kind, value}
//                                      fit its schema according to the browser's checker
import { readFileSync } from "node:fs";

import {
  DEFINITION,
  bytesToHex,
  checkSchema,
  capacityMessage,
  decodeAssign,
  encodeResultFrame,
  errorMessage,
  helloMessage,
  parseServerMessage,
  pingMessage,
  progressMessage,
  roundDeclinedMessage,
} from "../../static/worker_frontend/protocol.js";

const A = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
const SHA = "ab".repeat(32);

function built() {
  const messages = {
    hello_full: helloMessage({
      token: "t".repeat(40),
      userAgent: "Mozilla/5.0\n(evil)\u0000",
      capabilities: { cores: 8, memory_mb: 8192.7, simd: true, battery_powered: false, metered: "yes" },
      slots: 4,
      resume: A,
    }),
    hello_minimal: helloMessage({ token: "t".repeat(10), slots: 0 }),
    hello_clamped: helloMessage({
      token: "t".repeat(20),
      userAgent: "x".repeat(5000),
      capabilities: { cores: 10_000, memory_mb: -5 },
      slots: 999,
      resume: `${A}\n`,
    }),
    hello_nan_slots: helloMessage({ token: "t".repeat(20), capabilities: { cores: NaN }, slots: NaN }),
    capacity_0: capacityMessage(0),
    capacity_big: capacityMessage(1e9),
    capacity_negative: capacityMessage(-3),
    progress_plain: progressMessage(A),
    progress_fraction: progressMessage(A, 0.25),
    progress_over: progressMessage(A, 7),
    progress_nan: progressMessage(A, NaN),
    error_known: errorMessage(A, "kernel_failed", "trap: unreachable\n  at wasm"),
    error_unknown_code: errorMessage(A, "gremlins", "x".repeat(2000)),
    error_nul: errorMessage(A, "timeout", "a\u0000b"),
    error_empty: errorMessage(A, "internal"),
    ping: pingMessage(),
    round_declined_paused: roundDeclinedMessage(7, "paused", "user"),
    round_declined_unknown: roundDeclinedMessage(0, "gremlins", "line\nbreak\u0000" + "x".repeat(400)),
  };
  const out = Object.entries(messages).map(([name, message]) => ({ name, text: JSON.stringify(message) }));
  const frames = {
    result_small: encodeResultFrame({ assignment: A, sha256: SHA, elapsedMs: 12.6 }, new Uint8Array([1, 2, 3])),
    result_no_elapsed: encodeResultFrame({ assignment: A, sha256: SHA }, new Uint8Array(0)),
    result_elapsed_huge: encodeResultFrame({ assignment: A, sha256: SHA, elapsedMs: 1e15 }, new Uint8Array(16)),
    result_elapsed_negative: encodeResultFrame({ assignment: A, sha256: SHA, elapsedMs: -4 }, new Uint8Array(8)),
  };
  for (const [name, frame] of Object.entries(frames)) out.push({ name, frame_hex: bytesToHex(frame) });
  return out;
}

function parsed(texts) {
  return texts.map((text) => {
    try {
      const message = parseServerMessage(text);
      if (message.type === "assign") decodeAssign(message);
      return { ok: true };
    } catch (err) {
      return { ok: false, error: `${err.name}: ${err.message}` };
    }
  });
}

function checked(cases) {
  return cases.map(({ route, direction, kind, value }) => checkSchema(DEFINITION.routes[route][direction][kind], value) === null);
}

const mode = process.argv[2];
if (mode === "build") process.stdout.write(JSON.stringify(built()));
else if (mode === "parse") process.stdout.write(JSON.stringify(parsed(JSON.parse(readFileSync(0, "utf8")))));
else if (mode === "check") process.stdout.write(JSON.stringify(checked(JSON.parse(readFileSync(0, "utf8")))));
else throw new Error(`unknown mode ${mode}`);
