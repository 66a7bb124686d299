// Replays input sequences through the browser's session and prints every step's effects and
// state as JSON. Used by tests/edge_worker/test_session_parity.py, which feeds the same random
// sequences to the edge worker's session and expects identical output. Not a test on its own.
//   stdin:  {"config": {...}, "server_defaults": {...}, "sequences": [[input, ...], ...]}
//   stdout: [[{"effects": [...], "state": {...}}, ...], ...]
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

import { Outbox } from "../../static/worker_frontend/outbox.js";
import { Backoff, helloMessage } from "../../static/worker_frontend/protocol.js";
import { Session } from "../../static/worker_frontend/session.js";

const fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
const { config, server_defaults: defaults, sequences } = JSON.parse(readFileSync(0, "utf8"));

const results = sequences.map(({ jitter, steps }) => {
  const session = new Session({
    concurrency: config.concurrency,
    buildHello: (slots, resume) => helloMessage({ token: "t".repeat(40), capabilities: { cores: 1 }, slots, resume }),
    backoff: new Backoff({ random: () => jitter }),
    outbox: new Outbox(),
    workerId: config.worker,
    heartbeatFloorMs: config.heartbeat_floor_ms,
  });
  return steps.map((input) => {
    let effects;
    if ("server" in input) {
      const { server: type, ...fields } = input;
      effects = session.message(JSON.stringify({ v: 1, type, ...(defaults[type] ?? {}), ...fields }));
    } else if (input.event === "finished") {
      const output = fromHex(input.output_hex);
      const sha256 = createHash("sha256").update(output).digest("hex");
      effects = session.finished(input.assignment, output, sha256, input.elapsed_ms);
    } else {
      effects = session.handle(input);
    }
    return { effects, state: session.snapshot() };
  });
});
process.stdout.write(JSON.stringify(results));
