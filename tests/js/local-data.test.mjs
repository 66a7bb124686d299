// Unit tests for local-data.js (a contributor's own training data): CSV parsing against a job's
// schema with its errors and limits, image folders with an injected decoder, and localShard over
// a store double (the real IndexedDB store runs in Chromium: tests/e2e/test_local_data_browser.py).
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  LIMITS,
  LocalDataError,
  classOfPath,
  csvRecords,
  describeSchema,
  greyFromRgba,
  localShard,
  parseCsv,
  parseImages,
  sameSchema,
} from "../../static/worker_frontend/local-data.js";

const BY_NAME = { format: "csv", features: 3, classes: 2, label_column: "label" };
const BY_INDEX = { format: "csv", features: 2, classes: 3, label_index: 0 };
const IMAGES = { format: "images", features: 4, classes: 2, image_width: 2, image_height: 2, class_names: ["cat", "dog"] };

function rejects(fn, { code = "bad_data", line, text }) {
  assert.throws(fn, (err) => {
    assert.ok(err instanceof LocalDataError, `not a LocalDataError: ${err}`);
    assert.equal(err.code, code);
    if (line !== undefined) assert.equal(err.line, line);
    if (text !== undefined) assert.match(err.message, text);
    return true;
  });
}

describe("csvRecords", () => {
  it("splits CRLF and LF rows, quoted fields with commas, quotes and newlines, and skips blank lines", () => {
    const text = '\ufeffa,"b, c","say ""hi"""\r\n\r\n1,"two\nlines",3\n4,5,6';
    assert.deepEqual([...csvRecords(text)], [
      { line: 1, fields: ["a", "b, c", 'say "hi"'] },
      { line: 3, fields: ["1", "two\nlines", "3"] },
      { line: 5, fields: ["4", "5", "6"] },
    ]);
  });

  it("reports an unclosed quote with the line it starts on", () => {
    rejects(() => [...csvRecords('a,b\n1,"2\n3,4\n')], { line: 2, text: /not closed/ });
  });
});

describe("parseCsv", () => {
  it("reads features row-major and labels from the named column, wherever it is", () => {
    const text = "f1, label ,f2,f3\n0.5,1,2,-3\n1e-3,0,4.25,5\n";
    const parsed = parseCsv(text, BY_NAME);
    assert.equal(parsed.n, 2);
    assert.equal(parsed.features, 3);
    assert.ok(parsed.x instanceof Float32Array);
    assert.ok(parsed.y instanceof Int32Array);
    assert.deepEqual(Array.from(parsed.x), [0.5, 2, -3, Math.fround(1e-3), 4.25, 5]);
    assert.deepEqual(Array.from(parsed.y), [1, 0]);
    assert.deepEqual(parsed.classCounts, [1, 1]);
  });

  it("takes the label by its index when the schema gives one", () => {
    const parsed = parseCsv('y,"a",b\n2,1,1\n2,0,0\n0,3,4', BY_INDEX);
    assert.deepEqual(Array.from(parsed.y), [2, 2, 0]);
    assert.deepEqual(Array.from(parsed.x), [1, 1, 0, 0, 3, 4]);
    assert.deepEqual(parsed.classCounts, [1, 0, 2]);
  });

  it("grows past its first buffer without losing rows", () => {
    const rows = Array.from({ length: 3000 }, (_, i) => `${i},${i % 3},${-i}`);
    const parsed = parseCsv(`a,label,b\n${rows.join("\n")}`, { ...BY_NAME, features: 2, classes: 3 });
    assert.equal(parsed.n, 3000);
    assert.equal(parsed.x.length, 6000);
    assert.deepEqual(Array.from(parsed.x.slice(5998)), [2999, -2999]);
    assert.deepEqual(parsed.classCounts, [1000, 1000, 1000]);
  });

  const cases = [
    ["an empty file", "", { text: /empty/ }],
    ["a header only", "a,b,c,label\n", { text: /no data rows/ }],
    ["too few header columns", "a,label\n1,0\n", { line: 1, text: /2 columns; this job needs 4/ }],
    ["no such label column", "a,b,c,d\n1,2,3,0\n", { line: 1, text: /no column is named “label”/ }],
    ["two label columns", "label,b,c,label\n1,2,3,0\n", { line: 1, text: /two columns are named/ }],
    ["a short row", "a,b,c,label\n1,2,3,0\n1,2,0\n", { line: 3, text: /3 values; the header has 4/ }],
    ["a word among numbers", "a,b,c,label\n1,2,3,0\n1,x2,3,1\n", { line: 3, text: /“x2” in column “b” is not a number/ }],
    ["an empty cell", "a,b,c,label\n1,,3,0\n", { line: 2, text: /“” in column “b”/ }],
    ["an infinite value", "a,b,c,label\n1,Infinity,3,0\n", { line: 2, text: /not a number/ }],
    ["a label out of range", "a,b,c,label\n1,2,3,2\n", { line: 2, text: /label “2” is not a whole number from 0 to 1/ }],
    ["a fractional label", "a,b,c,label\n1,2,3,0.5\n", { line: 2, text: /label “0.5”/ }],
    ["a negative label", "a,b,c,label\n1,2,3,-1\n", { line: 2, text: /label “-1”/ }],
  ];
  for (const [what, text, expected] of cases) {
    it(`refuses ${what} with a clear message`, () => rejects(() => parseCsv(text, BY_NAME), expected));
  }

  it("refuses a file over the size limit before parsing it", () => {
    const limits = { ...LIMITS, csvBytes: 20 };
    rejects(() => parseCsv("a,b,c,label\n1,2,3,0\n1,2,3,1\n", BY_NAME, limits), { text: /larger than 0 MB/ });
  });

  it("refuses more rows than the row limit, naming the first row over it", () => {
    const limits = { ...LIMITS, rows: 2 };
    rejects(() => parseCsv("a,b,c,label\n1,2,3,0\n1,2,3,1\n1,2,3,1\n", BY_NAME, limits), { line: 4, text: /more than 2 data rows/ });
    assert.equal(parseCsv("a,b,c,label\n1,2,3,0\n1,2,3,1\n", BY_NAME, limits).n, 2);
  });

  it("caps rows so rows × features stays under the cell limit", () => {
    const limits = { ...LIMITS, cells: 7 }; // 3 features: at most 2 rows
    rejects(() => parseCsv("a,b,c,label\n1,2,3,0\n1,2,3,1\n1,2,3,1\n", BY_NAME, limits), { line: 4, text: /more than 2 data rows/ });
  });
});

describe("images", () => {
  it("finds the class from the folder under the picked one", () => {
    assert.equal(classOfPath("pets/dog/a.png", ["cat", "dog"]), 1);
    assert.equal(classOfPath("pets/dog/puppies/b.png", ["cat", "dog"]), 1);
    assert.equal(classOfPath("pets/a.png", ["cat", "dog"]), -1);
    assert.equal(classOfPath("pets/cow/a.png", ["cat", "dog"]), -1);
  });

  it("turns RGBA into grey values in [0, 1]", () => {
    const grey = greyFromRgba(new Uint8ClampedArray([255, 255, 255, 255, 0, 0, 0, 255, 255, 0, 0, 255]), 3);
    assert.deepEqual(Array.from(grey), [1, 0, Math.fround(0.299)]);
  });

  it("decodes each image of a class folder and skips the rest", async () => {
    const file = (path, size = 10) => ({ name: path.split("/").pop(), webkitRelativePath: path, size });
    const files = [file("pets/cat/1.png"), file("pets/dog/2.JPG"), file("pets/notes.txt"), file("pets/cow/3.png"), file("pets/dog/readme.md")];
    const seen = [];
    const decode = async (f, w, h) => {
      seen.push([f.webkitRelativePath, w, h]);
      return new Float32Array(w * h).fill(f.webkitRelativePath.includes("cat") ? 0.25 : 0.75);
    };
    const parsed = await parseImages(files, IMAGES, { decode });
    assert.deepEqual(seen, [["pets/cat/1.png", 2, 2], ["pets/dog/2.JPG", 2, 2]]);
    assert.equal(parsed.n, 2);
    assert.deepEqual(Array.from(parsed.x), [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75]);
    assert.deepEqual(Array.from(parsed.y), [0, 1]);
    assert.deepEqual(parsed.classCounts, [1, 1]);
    assert.equal(parsed.skipped, 3);
    assert.deepEqual(parsed.skippedFolders, ["cow"]);
  });

  it("refuses a folder without class images, oversized or undecodable images, and too many", async () => {
    const file = (path, size = 10) => ({ name: path.split("/").pop(), webkitRelativePath: path, size });
    const decode = async (_f, w, h) => new Float32Array(w * h);
    await assert.rejects(parseImages([file("x/cow/1.png")], IMAGES, { decode }), { code: "bad_data", message: /no images in sub-folders named cat, dog/ });
    await assert.rejects(parseImages([file("x/cat/1.png", LIMITS.imageBytes + 1)], IMAGES, { decode }), { code: "bad_data", message: /x\/cat\/1.png is larger than 16 MB/ });
    const broken = async () => {
      throw new Error("not an image");
    };
    await assert.rejects(parseImages([file("x/cat/1.png")], IMAGES, { decode: broken }), { code: "bad_data", message: /could not be decoded as an image \(not an image\)/ });
    const limits = { ...LIMITS, images: 1 };
    await assert.rejects(parseImages([file("x/cat/1.png"), file("x/dog/2.png")], IMAGES, { decode, limits }), { code: "bad_data", message: /2 images; at most 1/ });
  });
});

describe("schema", () => {
  it("describes what the contributor must pick", () => {
    assert.equal(describeSchema(BY_NAME), "A CSV file with a header row, 3 numeric feature columns and a label column named “label” holding whole numbers from 0 to 1.");
    assert.match(describeSchema(BY_INDEX), /the label in column 1 holding whole numbers from 0 to 2/);
    assert.match(describeSchema(IMAGES), /sub-folder per class \(cat, dog\).*2×2 grey pixels/);
  });

  it("compares schemas field by field", () => {
    assert.ok(sameSchema(BY_NAME, { ...BY_NAME }));
    assert.ok(!sameSchema(BY_NAME, { ...BY_NAME, label_column: "y" }));
    assert.ok(!sameSchema(IMAGES, { ...IMAGES, class_names: ["dog", "cat"] }));
    assert.ok(!sameSchema(undefined, BY_NAME));
  });
});

describe("localShard", () => {
  const job = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
  const kept = (fields = {}) => ({
    job,
    schema: BY_NAME,
    n: 3,
    features: 3,
    consent: true,
    x: new Float32Array([1, 2, 3, 4, 5, 6, 7, 8, 9]).buffer,
    y: new Int32Array([0, 1, 1]).buffer,
    ...fields,
  });
  const store = (record) => ({ get: async (id) => (id === job ? record : undefined) });

  it("returns the kept rows for the job", async () => {
    const shard = await localShard(job, { private: true, schema: BY_NAME }, { store: store(kept()) });
    assert.equal(shard.n, 3);
    assert.equal(shard.features, 3);
    assert.deepEqual(Array.from(shard.x), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.deepEqual(Array.from(shard.y), [0, 1, 1]);
  });

  it("trains on at most the job's max_samples rows", async () => {
    const shard = await localShard(job, { schema: BY_NAME, max_samples: 2 }, { store: store(kept()) });
    assert.equal(shard.n, 2);
    assert.deepEqual(Array.from(shard.x), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(Array.from(shard.y), [0, 1]);
  });

  it("says no_data without a record or without consent", async () => {
    await assert.rejects(localShard(job, {}, { store: store(undefined) }), { name: "LocalDataError", code: "no_data" });
    await assert.rejects(localShard(job, {}, { store: store(kept({ consent: false })) }), { code: "no_data", message: /Consent/ });
  });

  it("says bad_data when the job's schema changed or the record is damaged", async () => {
    await assert.rejects(localShard(job, { schema: { ...BY_NAME, classes: 3 } }, { store: store(kept()) }), { code: "bad_data", message: /different data/ });
    await assert.rejects(localShard(job, {}, { store: store(kept({ n: 4 })) }), { code: "bad_data", message: /damaged/ });
  });
});

describe("csvRecords line endings", () => {
  it("reads old Mac (CR only) files and mixes quoted and plain lines", () => {
    assert.deepEqual([...csvRecords('a,b\r1,2\r"x,y",3\n4,5')].map((r) => [r.line, r.fields]), [
      [1, ["a", "b"]],
      [2, ["1", "2"]],
      [3, ["x,y", "3"]],
      [4, ["4", "5"]],
    ]);
  });
});
