// Unit tests for the browser worker's protocol module. Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Outbox } from "../../static/worker_frontend/outbox.js";

import {
  Backoff,
  BACKOFF_MAX_MS,
  CLOSE,
  DEFINITION,
  ERROR_CODES,
  MAX_JSON_BYTES,
  MAX_PARAMS,
  MAX_RESULT_BYTES,
  MAX_SLOTS,
  PROTOCOL_VERSION,
  SERVER_SCHEMAS,
  ProtocolError,
  TokenBucket,
  U64_MAX,
  backoffCeiling,
  backoffDelay,
  base64ToBytes,
  bytesToBase64,
  bytesToHex,
  capacityMessage,
  decodeAssign,
  decodeResultFrame,
  defaultCores,
  encodeInput,
  encodeResultFrame,
  errorMessage,
  fatalCloseReason,
  helloMessage,
  hexToBytes,
  isMetered,
  parseServerMessage,
  parseU64,
  pingMessage,
  progressMessage,
  resolveKernelUrl,
  sha256Hex,
  websocketUrl,
} from "../../static/worker_frontend/protocol.js";

const A1 = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
const A2 = "11111111-2222-4333-8444-555555555555";
const A3 = "99999999-8888-4777-a666-555555555555";
const SHA_123 = "039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81"; // sha256(01 02 03)

/** A Storage look-alike for sessionStorage persistence. */
class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

function assignMessage(overrides = {}) {
  return {
    v: 1,
    type: "assign",
    assignment: A1,
    job: "j-1",
    task: 17,
    kernel: { name: "prime_count", version: "1.0.0", sha256: "a".repeat(64), url: "/kernels/abc.wasm" },
    input: { lo: "1000001", hi: "2000001", seed: "0", params: [] },
    lease_ms: 60000,
    work_units: 1000000,
    ...overrides,
  };
}

describe("result frame", () => {
  // Computed independently with Python's struct/json (separators without spaces) and accepted by
  // the server's parse_result_frame.
  const EXPECTED_HEX =
    "000000a8" +
    "7b2276223a312c2274797065223a22726573756c74222c2261737369676e6d656e74223a22" +
    "30663165326433632d346235612d343936382d383737362d613562346333643265316630222c" +
    "22736861323536223a22303339303538633666326330636234393263353333623061346431" +
    "34656637376363306637386162636363656435323837643834613161323031316366623831" +
    "222c22656c61707365645f6d73223a3132307d" +
    "010203";

  it("encodes byte-exactly: u32 BE header length, JSON header, output", () => {
    const frame = encodeResultFrame({ assignment: A1, sha256: SHA_123, elapsedMs: 120 }, new Uint8Array([1, 2, 3]));
    assert.equal(bytesToHex(frame), EXPECTED_HEX);
    assert.deepEqual([...frame.subarray(0, 4)], [0, 0, 0, 168]);
  });

  it("round-trips through the decoder", () => {
    const output = new Uint8Array(1000).map((_, i) => i & 0xff);
    const frame = encodeResultFrame({ assignment: A2, sha256: "b".repeat(64), elapsedMs: 5.6 }, output);
    const { header, output: back } = decodeResultFrame(frame);
    assert.deepEqual(header, { v: 1, type: "result", assignment: A2, sha256: "b".repeat(64), elapsed_ms: 6 });
    assert.deepEqual(back, output);
    assert.deepEqual(Object.keys(header), ["v", "type", "assignment", "sha256", "elapsed_ms"]);
  });

  it("accepts an ArrayBuffer and an empty output", () => {
    const frame = encodeResultFrame({ assignment: A2, sha256: "c".repeat(64) }, new ArrayBuffer(0));
    const { header, output } = decodeResultFrame(frame);
    assert.equal(output.length, 0);
    assert.equal("elapsed_ms" in header, false);
  });

  it("clamps elapsed_ms to the schema's integer range", () => {
    const h = (ms) => decodeResultFrame(encodeResultFrame({ assignment: A1, sha256: SHA_123, elapsedMs: ms }, new Uint8Array())).header.elapsed_ms;
    assert.equal(h(-5), 0);
    assert.equal(h(1e12), 86_400_000);
    assert.equal(h(NaN), 0);
  });

  it("rejects bad ids, bad hashes and oversized outputs", () => {
    assert.throws(() => encodeResultFrame({ assignment: "nope", sha256: SHA_123 }, new Uint8Array()), RangeError);
    assert.throws(() => encodeResultFrame({ assignment: A1, sha256: SHA_123.toUpperCase() }, new Uint8Array()), RangeError);
    assert.throws(() => encodeResultFrame({ assignment: A1, sha256: SHA_123 }, new Uint8Array(MAX_RESULT_BYTES + 1)), RangeError);
    assert.doesNotThrow(() => encodeResultFrame({ assignment: A1, sha256: SHA_123 }, new Uint8Array(MAX_RESULT_BYTES)));
  });

  it("decoder refuses truncated frames", () => {
    assert.throws(() => decodeResultFrame(new Uint8Array([0, 0])), ProtocolError);
    assert.throws(() => decodeResultFrame(new Uint8Array([0, 0, 0, 99, 0x7b])), ProtocolError);
  });
});

describe("sha256Hex", () => {
  it("hashes with Web Crypto", async () => {
    assert.equal(await sha256Hex(new Uint8Array([1, 2, 3])), SHA_123);
    assert.equal(await sha256Hex(new Uint8Array()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  });
});

describe("u64 decimal strings", () => {
  it("parse exactly above 2^53", () => {
    assert.equal(parseU64("9007199254740993"), 9007199254740993n); // 2^53 + 1: not a double
    assert.equal(parseU64("18446744073709551615"), U64_MAX);
    assert.equal(parseU64("0"), 0n);
    assert.equal(parseU64(42), 42n);
  });

  it("reject out of range, negative, fractional and unsafe numbers", () => {
    for (const bad of ["18446744073709551616", "-1", "1.5", "", "1e3", " 1", 2 ** 53 + 2, -1, 1.5, null, undefined, {}]) {
      assert.throws(() => parseU64(bad), ProtocolError, String(bad));
    }
  });
});

describe("assign decoder", () => {
  it("converts lo/hi/seed to BigInt exactly", () => {
    const t = decodeAssign(
      assignMessage({ input: { lo: "1152921504606846977", hi: "18446744073709551615", seed: "9223372036854775809", params: [1.5, -2] } }),
    );
    assert.equal(t.input.lo, 2n ** 60n + 1n);
    assert.equal(t.input.hi, U64_MAX);
    assert.equal(t.input.seed, 2n ** 63n + 1n);
    assert.deepEqual(t.input.params, [1.5, -2]);
    assert.equal(t.assignment, A1);
    assert.equal(t.task, 17);
    assert.equal(t.kernel.name, "prime_count");
    assert.equal(t.leaseMs, 60000);
    assert.equal(t.workUnits, 1000000);
  });

  it("defaults a missing seed and params", () => {
    const t = decodeAssign(assignMessage({ input: { lo: "1", hi: "2" } }));
    assert.equal(t.input.seed, 0n);
    assert.deepEqual(t.input.params, []);
  });

  it("rejects malformed tasks", () => {
    const bad = [
      assignMessage({ assignment: "x" }),
      assignMessage({ kernel: { name: "k", sha256: "zz", url: "/k" } }),
      assignMessage({ kernel: { name: "k", sha256: "a".repeat(64) } }),
      assignMessage({ input: { lo: "5", hi: "4", seed: "0", params: [] } }),
      assignMessage({ input: { lo: "1", hi: "2", seed: "0", params: ["1"] } }),
      assignMessage({ input: { lo: "1", hi: "2", seed: "0", params: [Infinity] } }),
      assignMessage({ input: { lo: "1", hi: "2", seed: "0", params: new Array(4097).fill(0) } }),
      assignMessage({ input: null }),
      { ...assignMessage(), type: "ack" },
    ];
    for (const m of bad) assert.throws(() => decodeAssign(m), ProtocolError);
  });
});

describe("ABI input encoder", () => {
  it("matches the Python encoder byte for byte", () => {
    // encode_input(1, 2**60 + 3, 7, [1.5, -2.0]).hex() from the edge worker's abi module
    const expected =
      "0100000000000000" + "0300000000000010" + "0700000000000000" + "02000000" + "00000000" +
      "000000000000f83f" + "00000000000000c0";
    assert.equal(bytesToHex(encodeInput(1n, 2n ** 60n + 3n, 7n, [1.5, -2.0])), expected);
    assert.equal(bytesToHex(encodeInput("1", "1152921504606846979", "7", [1.5, -2.0])), expected);
  });

  it("handles the u64 extremes and no params", () => {
    // encode_input(0, 2**64 - 1, 2**63 + 5, [])
    assert.equal(
      bytesToHex(encodeInput(0n, U64_MAX, 2n ** 63n + 5n, [])),
      "0000000000000000ffffffffffffffff05000000000000800000000000000000",
    );
    assert.equal(encodeInput(0, 0, 0).length, 32);
  });

  it("rejects lo > hi and out-of-range values", () => {
    assert.throws(() => encodeInput(2n, 1n, 0n), RangeError);
    assert.throws(() => encodeInput(0n, U64_MAX + 1n, 0n), ProtocolError);
    assert.throws(() => encodeInput(0n, 1n, -1n), ProtocolError);
  });
});

describe("message builders", () => {
  it("hello carries exactly the schema's fields", () => {
    const m = helloMessage({
      token: "t".repeat(20),
      userAgent: "x".repeat(400),
      capabilities: { cores: 8, memory_mb: 8192, simd: true, battery_powered: false, metered: undefined, extra: 1 },
      slots: 7,
      resume: A2,
    });
    assert.deepEqual(Object.keys(m), ["v", "type", "token", "client", "capabilities", "slots", "resume"]);
    assert.equal(m.v, 1);
    assert.deepEqual(m.client.kind, "browser");
    assert.equal(m.client.version, "1.0.0");
    assert.equal(m.client.user_agent.length, 300);
    assert.deepEqual(m.capabilities, { cores: 8, memory_mb: 8192, simd: true, battery_powered: false });
    assert.equal(m.slots, 7);
    assert.equal(m.resume, A2);
  });

  it("hello drops a malformed resume id and clamps slots and cores", () => {
    const m = helloMessage({ token: "t".repeat(20), capabilities: { cores: 0 }, slots: 500, resume: "not-a-uuid" });
    assert.equal(m.resume, null);
    assert.equal(m.slots, 64);
    assert.equal(m.capabilities.cores, 1);
    assert.equal("user_agent" in m.client, false);
  });

  it("capacity, progress, error and ping", () => {
    assert.deepEqual(capacityMessage(0), { v: 1, type: "capacity", slots: 0 });
    assert.deepEqual(capacityMessage(99), { v: 1, type: "capacity", slots: 64 });
    assert.deepEqual(progressMessage(A1), { v: 1, type: "progress", assignment: A1 });
    assert.deepEqual(progressMessage(A1, 1.7), { v: 1, type: "progress", assignment: A1, fraction: 1 });
    assert.deepEqual(progressMessage(A1, NaN), { v: 1, type: "progress", assignment: A1 });
    assert.deepEqual(errorMessage(A1, "hash_mismatch", "bad"), { v: 1, type: "error", assignment: A1, code: "hash_mismatch", message: "bad" });
    assert.equal(errorMessage(A1, "whatever").code, "internal");
    assert.equal(errorMessage(A1, "kernel_failed", "m".repeat(900)).message.length, 500);
    assert.deepEqual(pingMessage(), { v: 1, type: "ping" });
  });

  it("every builder's JSON fits the 16 KiB text frame limit", () => {
    const m = helloMessage({ token: "t".repeat(512), userAgent: "u".repeat(5000), capabilities: { cores: 4 }, slots: 4 });
    assert.ok(JSON.stringify(m).length < 16 * 1024);
  });
});

describe("server messages", () => {
  it("parses v1 objects and refuses the rest", () => {
    assert.equal(parseServerMessage('{"v":1,"type":"pong"}').type, "pong");
    for (const bad of ["nope", "[]", "null", '{"v":2,"type":"pong"}', '{"v":1}']) {
      assert.throws(() => parseServerMessage(bad), ProtocolError, bad);
    }
  });

  it("checks each server message against its schema in the definition", () => {
    const ack = { v: 1, type: "ack", assignment: A1, status: "accepted" };
    assert.deepEqual(parseServerMessage(JSON.stringify(ack)), ack);
    assert.equal(parseServerMessage(JSON.stringify({ ...ack, extra: "ignored" })).extra, "ignored");
    const broken = [
      { ...ack, status: "maybe" },
      { ...ack, assignment: `${A1}\n` },
      { v: 1, type: "teleport" },
      { v: 1, type: "credit", validated: -1, work_units: 0 },
      { v: 1, type: "welcome", worker: A1 },
    ];
    for (const message of broken) {
      assert.throws(() => parseServerMessage(JSON.stringify(message)), ProtocolError, JSON.stringify(message));
    }
    assert.throws(() => parseServerMessage(" ".repeat(MAX_JSON_BYTES + 1)), ProtocolError);
  });

  it("close codes 4001 and 4002 stop the worker, others reconnect", () => {
    assert.match(fatalCloseReason(CLOSE.UNAUTHORIZED), /revoked/);
    assert.match(fatalCloseReason(CLOSE.PROTOCOL_VERSION), /reload/i);
    for (const code of [1000, 1006, 1011, 4003, 4008, 4009]) assert.equal(fatalCloseReason(code), null);
  });
});

describe("constants come from the generated definition", () => {
  it("matches protocol_v1.json", () => {
    assert.equal(PROTOCOL_VERSION, DEFINITION.version);
    assert.equal(MAX_SLOTS, DEFINITION.limits.max_slots);
    assert.equal(MAX_PARAMS, DEFINITION.limits.max_params);
    assert.equal(MAX_RESULT_BYTES, DEFINITION.limits.max_result_bytes);
    assert.deepEqual(ERROR_CODES, Object.keys(DEFINITION.error_codes.task));
    assert.deepEqual(
      { ...CLOSE },
      { UNAUTHORIZED: 4001, PROTOCOL_VERSION: 4002, HELLO_TIMEOUT: 4003, NOT_FOUND: 4004, RATE_LIMITED: 4008, TOO_LARGE: 4009 },
    );
    assert.deepEqual(Object.keys(SERVER_SCHEMAS), [
      "welcome", "assign", "ack", "credit", "cancel", "error", "pong", "round_invite",
      "secagg_keys", "secagg_ciphertexts", "secagg_unmask", "secagg_abort",
    ]);
    assert.ok(Object.isFrozen(DEFINITION.limits));
  });
});

describe("URLs", () => {
  it("websocket URL follows the page's scheme and host", () => {
    assert.equal(websocketUrl("/ws/worker/", { protocol: "https:", host: "ccgsc.example" }), "wss://ccgsc.example/ws/worker/");
    assert.equal(websocketUrl("/ws/worker/", { protocol: "http:", host: "127.0.0.1:8000" }), "ws://127.0.0.1:8000/ws/worker/");
  });

  it("kernel URLs must stay on the site (the token goes with them)", () => {
    const base = "http://127.0.0.1:8000/contribute/";
    assert.equal(resolveKernelUrl("/kernels/ab.wasm", base), "http://127.0.0.1:8000/kernels/ab.wasm");
    assert.equal(resolveKernelUrl("http://127.0.0.1:8000/k.wasm", base), "http://127.0.0.1:8000/k.wasm");
    for (const bad of ["https://evil.example/k.wasm", "//evil.example/k.wasm", "http://127.0.0.1:9000/k.wasm", "data:application/wasm;base64,AA=="]) {
      assert.throws(() => resolveKernelUrl(bad, base), ProtocolError, bad);
    }
  });
});

describe("backoff", () => {
  it("doubles from 0.5 s and caps at 30 s", () => {
    const ceilings = Array.from({ length: 10 }, (_, i) => backoffCeiling(i));
    assert.deepEqual(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
    assert.equal(backoffCeiling(1000), BACKOFF_MAX_MS);
  });

  it("jitter stays within [ceiling/2, ceiling]", () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = backoffCeiling(attempt);
      assert.equal(backoffDelay(attempt, { random: () => 0 }), ceiling / 2);
      assert.equal(backoffDelay(attempt, { random: () => 0.999999 }), Math.round(ceiling / 2 + (ceiling / 2) * 0.999999));
      for (let k = 0; k < 50; k++) {
        const d = backoffDelay(attempt);
        assert.ok(d >= ceiling / 2 && d <= ceiling, `${d} outside [${ceiling / 2}, ${ceiling}]`);
      }
    }
  });

  it("Backoff grows per retry and resets after welcome", () => {
    const b = new Backoff({ random: () => 1 });
    assert.deepEqual([b.next(), b.next(), b.next()], [500, 1000, 2000]);
    for (let i = 0; i < 20; i++) assert.ok(b.next() <= 30000);
    b.reset();
    assert.equal(b.next(), 500);
  });
});

describe("Outbox", () => {
  const frame = (n) => new Uint8Array([n, n + 1, n + 2]);

  it("keeps results until acked and replays them in order", () => {
    const box = new Outbox();
    box.add(A1, frame(1));
    box.add(A2, frame(2));
    box.add(A3, frame(3));
    assert.equal(box.size, 3);
    assert.deepEqual(box.pending().map((p) => p.assignment), [A1, A2, A3]);
    // Simulate a reconnect: everything unacked is replayed, acked ones never again.
    assert.equal(box.ack(A2), true);
    assert.deepEqual(box.pending().map((p) => p.assignment), [A1, A3]);
    assert.deepEqual(box.pending()[1].frame, frame(3));
    assert.equal(box.ack(A2), false, "a duplicate ack is harmless");
    assert.equal(box.ack(A1), true);
    assert.equal(box.ack(A3), true);
    assert.equal(box.size, 0);
    assert.deepEqual(box.pending(), []);
  });

  it("re-adding an assignment replaces the frame without duplicating it", () => {
    const box = new Outbox();
    box.add(A1, frame(1));
    box.add(A1, frame(9));
    assert.equal(box.size, 1);
    assert.deepEqual(box.get(A1), frame(9));
    assert.equal(box.get(A2), null);
  });

  it("persists to storage and survives a reload", () => {
    const storage = new MemoryStorage();
    const first = new Outbox({ storage, key: "k" });
    const big = new Uint8Array(70000).map((_, i) => (i * 7) & 0xff);
    first.add(A1, big);
    first.add(A2, frame(2));
    const second = new Outbox({ storage, key: "k" });
    assert.deepEqual(second.pending().map((p) => p.assignment), [A1, A2]);
    assert.deepEqual(second.get(A1), big);
    second.ack(A1);
    second.ack(A2);
    assert.equal(storage.getItem("k"), null);
    assert.equal(new Outbox({ storage, key: "k" }).size, 0);
  });

  it("survives storage that throws or holds garbage", () => {
    const throwing = { getItem() { throw new Error("x"); }, setItem() { throw new Error("quota"); }, removeItem() {} };
    const box = new Outbox({ storage: throwing });
    box.add(A1, frame(1));
    assert.equal(box.size, 1);
    const garbage = new MemoryStorage();
    garbage.setItem("ccgsc.outbox", "{not json");
    assert.equal(new Outbox({ storage: garbage }).size, 0);
  });

  it("keeps frames beyond the storage budget in memory only", () => {
    const storage = new MemoryStorage();
    const box = new Outbox({ storage, key: "k", maxStoredBytes: 10 });
    box.add(A1, frame(1));
    box.add(A2, new Uint8Array(20));
    assert.equal(box.size, 2);
    assert.equal(new Outbox({ storage, key: "k" }).size, 1);
  });
});

describe("TokenBucket", () => {
  it("allows a burst, then the steady rate", () => {
    let t = 0;
    const bucket = new TokenBucket({ rate: 50, burst: 100, now: () => t });
    let sent = 0;
    while (bucket.tryTake()) sent++;
    assert.equal(sent, 100);
    assert.equal(bucket.waitMs(), 20);
    t += 20;
    assert.equal(bucket.tryTake(), true);
    assert.equal(bucket.tryTake(), false);
    t += 1000;
    sent = 0;
    while (bucket.tryTake()) sent++;
    assert.equal(sent, 50);
    t += 1_000_000;
    sent = 0;
    while (bucket.tryTake()) sent++;
    assert.equal(sent, 100, "never more than the burst");
  });

  it("keeps a sender under the server's 50/s over any second", () => {
    let t = 0;
    const bucket = new TokenBucket({ rate: 40, burst: 80, now: () => t });
    const times = [];
    for (; t < 10_000; t += 1) if (bucket.tryTake()) times.push(t);
    for (let start = 1000; start < 9000; start += 250) {
      const inWindow = times.filter((x) => x >= start && x < start + 1000).length;
      assert.ok(inWindow <= 41, `${inWindow} messages in one second`);
    }
  });
});

describe("helpers", () => {
  it("default cores leave one free", () => {
    assert.equal(defaultCores(8), 7);
    assert.equal(defaultCores(1), 1);
    assert.equal(defaultCores(undefined), 1);
    assert.equal(defaultCores(256), 63);
  });

  it("metered detection", () => {
    assert.equal(isMetered(null), false);
    assert.equal(isMetered({ saveData: true }), true);
    assert.equal(isMetered({ type: "cellular" }), true);
    assert.equal(isMetered({ type: "wifi", saveData: false }), false);
  });

  it("hex and base64 round-trip", () => {
    const bytes = new Uint8Array(300).map((_, i) => (i * 31) & 0xff);
    assert.deepEqual(hexToBytes(bytesToHex(bytes)), bytes);
    assert.deepEqual(base64ToBytes(bytesToBase64(bytes)), bytes);
    assert.throws(() => hexToBytes("abc"), RangeError);
  });
});
