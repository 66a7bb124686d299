// Unit tests for local-columns.js (an analytics job's columns of a contributor's CSV) and the ABI
// v3 encoding of analytics-round.js: the cell grammar, refusals with their line, the row cap,
// localColumns over a store double (consent, the job's columns, damage), and encoding refusals.
// The whole path against the edge worker, byte for byte: tests/edge_worker/test_analytics_js_parity.py.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { decodeAnalyticsOutput, encodeAnalyticsInput, vectorLength } from "../../static/worker_frontend/analytics-round.js";
import { cellValue, describeColumns, localColumns, parseColumnsCsv } from "../../static/worker_frontend/local-columns.js";
import { LIMITS, LocalDataError } from "../../static/worker_frontend/local-data.js";

const SCHEMA = { format: "columns", columns: ["b", "a"] };

function refused(fn, code, text) {
  assert.throws(fn, (err) => err instanceof LocalDataError && err.code === code && text.test(err.message));
}

const storeWith = (record) => ({ get: async (job) => (job === "j1" ? record : undefined) });
const query = (names, maxRows = 10) => ({ columns: names.map((name) => ({ name, feature: 0, lo: 0, hi: 1, bins: 2 })), max_rows: maxRows });

describe("cellValue", () => {
  it("reads plain decimals and nothing else", () => {
    const numbers = { "1": 1, " -2.5 ": -2.5, "+.5": 0.5, "5.": 5, "1e3": 1000, "1E-2": 0.01 };
    for (const [cell, value] of Object.entries(numbers)) assert.equal(cellValue(cell), value, cell);
    for (const cell of ["", " ", "abc", "NaN", "inf", "Infinity", "0x10", "1_000", "1e999", "1,5", "٣", "--1", "e5"]) {
      assert.ok(Number.isNaN(cellValue(cell)), cell);
    }
  });
});

describe("parseColumnsCsv", () => {
  it("reads the named columns in the query's order, counting missing cells", () => {
    const parsed = parseColumnsCsv("a,x,b\n1,z,2\n,z,4\n\n5\n", SCHEMA);
    assert.equal(parsed.n, 3);
    assert.deepEqual(Array.from(parsed.x), [2, 1, 4, NaN, NaN, 5]);
    assert.deepEqual(parsed.missing, [1, 1]);
    assert.equal(parsed.capped, false);
    assert.ok(parsed.x instanceof Float32Array);
  });

  it("stops after max_rows records and says so", () => {
    const parsed = parseColumnsCsv("a,b\n1,2\n3,4\n5,6\n", SCHEMA, { maxRows: 2 });
    assert.deepEqual([parsed.n, parsed.capped], [2, true]);
    assert.deepEqual(Array.from(parsed.x), [2, 1, 4, 3]);
  });

  it("refuses a missing column, an empty file and a header without rows", () => {
    refused(() => parseColumnsCsv("a,c\n1,2\n", SCHEMA), "bad_data", /^Line 1: the header has no column named “b”/);
    refused(() => parseColumnsCsv("", SCHEMA), "bad_data", /empty/);
    refused(() => parseColumnsCsv("a,b\n\n", SCHEMA), "bad_data", /no data rows/);
  });

  it("refuses more rows than the page keeps, with the line", () => {
    const limits = { ...LIMITS, rows: 2 };
    refused(() => parseColumnsCsv("a,b\n1,2\n3,4\n5,6\n", SCHEMA, { limits }), "bad_data", /^Line 4: the file has more than 2 data rows/);
  });

  it("describes what the job asks for", () => {
    assert.match(describeColumns(SCHEMA), /2 numeric columns named “b”, “a”/);
  });
});

describe("localColumns", () => {
  const record = { job: "j1", schema: SCHEMA, consent: true, n: 3, features: 2, x: Float32Array.from([1, 2, 3, 4, 5, 6]).buffer };

  it("gives the kept rows, capped at max_rows", async () => {
    const rows = await localColumns("j1", query(["b", "a"], 2), { store: storeWith(record) });
    assert.deepEqual([rows.n, rows.features, Array.from(rows.x)], [2, 2, [1, 2, 3, 4]]);
  });

  it("refuses nothing kept, withdrawn consent, other columns and damage", async () => {
    const store = storeWith(record);
    await assert.rejects(localColumns("j2", query(["b", "a"]), { store }), { code: "no_data" });
    await assert.rejects(localColumns("j1", query(["b", "a"]), { store: storeWith({ ...record, consent: false }) }), { code: "no_data" });
    await assert.rejects(localColumns("j1", query(["a", "b"]), { store }), { code: "bad_data" });
    await assert.rejects(localColumns("j1", query(["b", "a"]), { store: storeWith({ ...record, n: 4 }) }), { code: "bad_data" });
    const training = { ...record, schema: { format: "csv", features: 2, classes: 2, label_column: "y" } };
    await assert.rejects(localColumns("j1", query(["b", "a"]), { store: storeWith(training) }), { code: "bad_data" });
  });
});

describe("the ABI v3 encoding", () => {
  const columns = [{ feature: 1, bins: 3, lo: 0.1, hi: 2 }];

  it("lays out the header, the column specs (f32 bounds) and the rows", () => {
    const input = encodeAnalyticsInput(columns, Float32Array.from([1, 2, 3, 4]), { rows: 2, features: 2, maxRows: 7 });
    const view = new DataView(input.buffer);
    assert.deepEqual([0, 4, 8, 12, 16, 20, 24, 28].map((o) => view.getUint32(o, true)), [1, 2, 2, 1, 7, 0, 0, 0]);
    assert.deepEqual([view.getUint32(32, true), view.getUint32(36, true)], [1, 3]);
    assert.equal(view.getFloat32(40, true), Math.fround(0.1));
    assert.equal(input.length, 32 + 16 + 16);
    assert.equal(vectorLength(columns), 6);
  });

  it("refuses shapes the kernel would refuse", () => {
    const x = new Float32Array(4);
    assert.throws(() => encodeAnalyticsInput([], x, { rows: 2, features: 2, maxRows: 1 }), RangeError);
    assert.throws(() => encodeAnalyticsInput([{ ...columns[0], feature: 2 }], x, { rows: 2, features: 2, maxRows: 1 }), RangeError);
    assert.throws(() => encodeAnalyticsInput([{ ...columns[0], bins: 1025 }], x, { rows: 2, features: 2, maxRows: 1 }), RangeError);
    assert.throws(() => encodeAnalyticsInput(columns, x, { rows: 3, features: 2, maxRows: 1 }), RangeError);
  });

  it("checks an output's length and declared d", () => {
    const output = new Uint8Array(32 + 4 * 6);
    new DataView(output.buffer).setUint32(20, 6, true);
    assert.equal(decodeAnalyticsOutput(output, columns).dimension, 6);
    assert.throws(() => decodeAnalyticsOutput(output.subarray(4), columns), /expected 56/);
    new DataView(output.buffer).setUint32(20, 5, true);
    assert.throws(() => decodeAnalyticsOutput(output, columns), /declares d = 5/);
  });
});
