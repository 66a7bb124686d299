// The browser's session state machine against the shared scenario table
// (tests/scenarios/worker_session.json), which tests/edge_worker/test_session_scenarios.py also
// runs against the edge worker's session.py. Run: node --test tests/js/
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";

import { Outbox } from "../../static/worker_frontend/outbox.js";
import { Backoff, decodeResultFrame, helloMessage } from "../../static/worker_frontend/protocol.js";
import { Session } from "../../static/worker_frontend/session.js";

const TABLE = JSON.parse(readFileSync(new URL("../scenarios/worker_session.json", import.meta.url), "utf8"));
const CLIENT = "browser";
const runsHere = (item) => (item.clients ?? [CLIENT]).includes(CLIENT);

/** Replace `@NAME` strings (values and keys) by the table's ids. */
function resolve(value) {
  if (typeof value === "string" && value.startsWith("@")) return TABLE.ids[value.slice(1)];
  if (Array.isArray(value)) return value.map(resolve);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [resolve(k), resolve(v)]));
  }
  return value;
}

/** Assert that `actual` has every key of `expected` with the same value. */
function matches(expected, actual, path) {
  if (Array.isArray(expected)) {
    assert.ok(Array.isArray(actual), `${path}: expected a list, got ${JSON.stringify(actual)}`);
    assert.equal(actual.length, expected.length, `${path}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
    expected.forEach((e, i) => matches(e, actual[i], `${path}[${i}]`));
  } else if (expected && typeof expected === "object") {
    assert.ok(actual && typeof actual === "object" && !Array.isArray(actual), `${path}: expected an object, got ${JSON.stringify(actual)}`);
    for (const [key, value] of Object.entries(expected)) {
      assert.ok(key in actual, `${path}.${key}: missing in ${JSON.stringify(actual)}`);
      matches(value, actual[key], `${path}.${key}`);
    }
  } else {
    assert.strictEqual(actual, expected, `${path}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

const fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));

function makeSession(config) {
  return new Session({
    concurrency: config.concurrency,
    buildHello: (slots, resume) =>
      helloMessage({ token: "t".repeat(40), capabilities: { cores: config.concurrency, simd: true }, slots, resume }),
    backoff: new Backoff({ random: () => config.jitter }),
    outbox: new Outbox(),
    workerId: config.worker,
    heartbeatFloorMs: config.heartbeat_floor_ms,
  });
}

/** Turn a table input into the session's own input and apply it. */
function feed(session, input) {
  if ("server" in input) {
    const { server: type, ...fields } = input;
    const message = { v: 1, type, ...resolve(TABLE.server_defaults[type] ?? {}), ...fields };
    return session.message(JSON.stringify(message));
  }
  const event = { ...input };
  if (event.event === "message") {
    event.data = "text" in event ? event.text : fromHex(event.binary_hex).buffer;
  }
  if (event.event === "finished") {
    event.output = fromHex(event.output_hex);
    event.sha256 = createHash("sha256").update(event.output).digest("hex");
  }
  return session.handle(event);
}

describe("worker session scenarios", () => {
  for (const scenario of TABLE.scenarios.filter(runsHere)) {
    it(scenario.name, () => {
      const session = makeSession(resolve({ ...TABLE.config, ...(scenario.config ?? {}) }));
      scenario.steps.forEach((raw, index) => {
        if (!runsHere(raw)) return;
        const step = resolve(raw);
        const where = `step ${index + 1} ${JSON.stringify(raw.input)}`;
        const effects = feed(session, step.input);
        const actions = effects.filter((e) => e.do !== "notify");
        const notes = effects.filter((e) => e.do === "notify").map(({ do: _, ...rest }) => rest);
        if ("effects" in step) matches(step.effects, actions, `${where} effects`);
        if ("notify" in step) matches(step.notify, notes, `${where} notify`);
        if ("state" in step) matches(step.state, session.snapshot(), `${where} state`);
        if ("frame" in step) {
          const { header, output } = decodeResultFrame(session.outbox.get(step.frame.assignment));
          matches(step.frame.header, header, `${where} frame`);
          assert.deepEqual([...output], [...fromHex(step.frame.output_hex)]);
        }
      });
    });
  }
});
