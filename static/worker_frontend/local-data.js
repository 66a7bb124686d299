// A contributor's own training data, kept on this device: parsing a CSV or a folder of images
// against the job's declared schema, the per-job cache in IndexedDB with the contributor's
// consent, and `localShard(job, data)`, which FL training calls when an invite's data is private.
// Nothing here sends anything anywhere: the parsed rows never leave the browser. No DOM: the
// page's "Your local data" section is local-data-view.js. Schema: docs/federated-learning.md.

export const LIMITS = Object.freeze({
  csvBytes: 64 * 1024 * 1024, // a CSV larger than this is refused before it is read
  rows: 200_000, // data rows of a CSV (or images of a folder) kept at most
  cells: 20_000_000, // rows × features: 80 MB of float32
  images: 20_000,
  imageBytes: 16 * 1024 * 1024, // one image file
});

const IMAGE_TYPES = /\.(png|jpe?g|gif|webp|bmp|avif)$/i;

export class LocalDataError extends Error {
  /** @param {"no_data" | "bad_data"} code  @param {string} message  @param {number} [line] */
  constructor(code, message, line) {
    super(message);
    this.name = "LocalDataError";
    this.code = code;
    if (line !== undefined) this.line = line;
  }
}

const bad = (message, line) => new LocalDataError("bad_data", line ? `Line ${line}: ${message}` : message, line);
const plural = (n, word) => `${n.toLocaleString("en")} ${word}${n === 1 ? "" : "s"}`;

/** One sentence a contributor can act on: what the job's schema asks for. */
export function describeSchema(schema) {
  const last = schema.classes - 1;
  if (schema.format === "csv") {
    const label = schema.label_column !== undefined ? `a label column named “${schema.label_column}”` : `the label in column ${schema.label_index + 1}`;
    return `A CSV file with a header row, ${plural(schema.features, "numeric feature column")} and ${label} holding whole numbers from 0 to ${last}.`;
  }
  return (
    `A folder with one sub-folder per class (${schema.class_names.join(", ")}), each holding images; ` +
    `they are resized to ${schema.image_width}×${schema.image_height} grey pixels on this device.`
  );
}

/** Whether two schemas ask for the same data (the cache is keyed by job and schema). */
export function sameSchema(a, b) {
  if (!a || !b) return false;
  const keys = ["format", "features", "classes", "label_column", "label_index", "image_width", "image_height"];
  return keys.every((k) => a[k] === b[k]) && JSON.stringify(a.class_names ?? null) === JSON.stringify(b.class_names ?? null);
}

/** Split CSV text into records of fields (RFC 4180 quotes, CRLF or LF), with each record's line. */
export function* csvRecords(text) {
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  let line = 1;
  const n = text.length;
  let quoteAt = text.indexOf('"', i);
  while (i < n) {
    const start = line;
    // Fast path: a line without quotes or lone carriage returns is one record split at commas.
    if (quoteAt >= 0 && quoteAt < i) quoteAt = text.indexOf('"', i);
    const end = text.indexOf("\n", i);
    const stop = end < 0 ? n : end;
    if (quoteAt < 0 || quoteAt > stop) {
      const raw = text.slice(i, stop > i && text[stop - 1] === "\r" ? stop - 1 : stop);
      if (!raw.includes("\r")) {
        i = stop + 1;
        line += 1;
        if (raw.trim() !== "") yield { line: start, fields: raw.split(",") };
        continue;
      }
    }
    const fields = [];
    let field = "";
    let quoted = false;
    let wasQuoted = false;
    for (;;) {
      if (i >= n) {
        if (quoted) throw bad("a quoted field is not closed before the end of the file", start);
        fields.push(field);
        break;
      }
      const c = text[i];
      if (quoted) {
        if (c === '"') {
          if (text[i + 1] === '"') {
            field += '"';
            i += 2;
          } else {
            quoted = false;
            i += 1;
          }
        } else {
          if (c === "\n") line += 1;
          field += c;
          i += 1;
        }
      } else if (c === '"' && field.trim() === "" && !wasQuoted) {
        quoted = true;
        wasQuoted = true;
        field = "";
        i += 1;
      } else if (c === ",") {
        fields.push(field);
        field = "";
        wasQuoted = false;
        i += 1;
      } else if (c === "\n" || c === "\r") {
        fields.push(field);
        i += c === "\r" && text[i + 1] === "\n" ? 2 : 1;
        line += 1;
        break;
      } else {
        field += c;
        i += 1;
      }
    }
    if (fields.length === 1 && fields[0].trim() === "") continue; // a blank line
    yield { line: start, fields };
  }
}

function labelColumn(header, schema) {
  const width = schema.features + 1;
  if (header.length !== width) {
    throw bad(`the header has ${plural(header.length, "column")}; this job needs ${width} (${plural(schema.features, "feature")} and the label).`, 1);
  }
  if (schema.label_index !== undefined) return schema.label_index;
  const names = header.map((h) => h.trim());
  const index = names.indexOf(schema.label_column);
  if (index < 0) throw bad(`no column is named “${schema.label_column}” (the header has ${names.slice(0, 8).join(", ")}${names.length > 8 ? ", …" : ""}).`, 1);
  if (names.indexOf(schema.label_column, index + 1) >= 0) throw bad(`two columns are named “${schema.label_column}”.`, 1);
  return index;
}

/**
 * Parse a CSV against a job's schema: the header row, then one sample per row.
 * @returns {{x: Float32Array, y: Int32Array, n: number, features: number, classCounts: number[]}}
 * @throws {LocalDataError} bad_data with the line number of the first problem
 */
export function parseCsv(text, schema, limits = LIMITS) {
  if (typeof text !== "string") throw bad("the file could not be read as text.");
  if (text.length > limits.csvBytes) throw bad(`the file is larger than ${Math.round(limits.csvBytes / 1048576)} MB.`);
  const { features, classes } = schema;
  const maxRows = Math.min(limits.rows, Math.floor(limits.cells / features));
  const records = csvRecords(text);
  const first = records.next();
  if (first.done) throw bad("the file is empty.");
  const label = labelColumn(first.value.fields, schema);
  const names = first.value.fields.map((h, i) => h.trim() || `column ${i + 1}`);
  let x = new Float32Array(Math.min(maxRows, 1024) * features);
  const y = [];
  for (const { line, fields } of records) {
    if (y.length >= maxRows) throw bad(`the file has more than ${plural(maxRows, "data row")}, the most this page keeps.`, line);
    if (fields.length !== features + 1) throw bad(`${plural(fields.length, "value")}; the header has ${features + 1}.`, line);
    if ((y.length + 1) * features > x.length) {
      const grown = new Float32Array(Math.min(maxRows * features, x.length * 2));
      grown.set(x);
      x = grown;
    }
    let offset = y.length * features;
    for (let c = 0; c < fields.length; c += 1) {
      const raw = fields[c].trim();
      const value = raw === "" ? NaN : Number(raw);
      if (c === label) {
        if (!Number.isInteger(value) || value < 0 || value >= classes) {
          throw bad(`the label “${raw}” is not a whole number from 0 to ${classes - 1}.`, line);
        }
        y.push(value);
      } else {
        if (!Number.isFinite(value)) throw bad(`“${raw}” in column “${names[c]}” is not a number.`, line);
        x[offset] = value;
        offset += 1;
      }
    }
  }
  if (y.length === 0) throw bad("the file has a header but no data rows.");
  const labels = Int32Array.from(y);
  return { x: x.slice(0, labels.length * features), y: labels, n: labels.length, features, classCounts: countClasses(labels, classes) };
}

export function countClasses(y, classes) {
  const counts = new Array(classes).fill(0);
  for (const label of y) counts[label] += 1;
  return counts;
}

/** The class of a picked file from its folder (`webkitRelativePath` = "picked/class/…/file"). */
export function classOfPath(path, classNames) {
  const parts = String(path || "").split("/");
  if (parts.length < 3) return -1; // a file at the top of the picked folder
  return classNames.indexOf(parts[1]);
}

/**
 * Turn picked image files into samples: the folder under the picked one names the class, each
 * image is decoded by `decode(file, width, height)` into width·height grey values in [0, 1].
 * Other files (not images, or in folders that are no class of the job) are counted as skipped.
 */
export async function parseImages(files, schema, { decode = decodeImage, limits = LIMITS, onProgress } = {}) {
  const { image_width: width, image_height: height, class_names: classNames } = schema;
  const picked = [];
  const skippedFolders = new Set();
  let skipped = 0;
  for (const file of files) {
    const label = classOfPath(file.webkitRelativePath || file.name, classNames);
    if (label < 0 || !IMAGE_TYPES.test(file.name)) {
      skipped += 1;
      const folder = String(file.webkitRelativePath || "").split("/")[1];
      if (label < 0 && folder && IMAGE_TYPES.test(file.name)) skippedFolders.add(folder);
      continue;
    }
    if (file.size > limits.imageBytes) throw bad(`${file.webkitRelativePath || file.name} is larger than ${Math.round(limits.imageBytes / 1048576)} MB.`);
    picked.push({ file, label });
  }
  if (picked.length === 0) {
    throw bad(`no images in sub-folders named ${classNames.join(", ")} were found in the folder you picked.`);
  }
  if (picked.length > limits.images) throw bad(`the folder has ${plural(picked.length, "image")}; at most ${limits.images.toLocaleString("en")} are kept.`);
  const features = width * height;
  const x = new Float32Array(picked.length * features);
  const y = new Int32Array(picked.length);
  for (let i = 0; i < picked.length; i += 1) {
    const { file, label } = picked[i];
    let pixels;
    try {
      pixels = await decode(file, width, height);
    } catch (err) {
      throw bad(`${file.webkitRelativePath || file.name} could not be decoded as an image (${err?.message || err}).`);
    }
    x.set(pixels, i * features);
    y[i] = label;
    if (onProgress) onProgress(i + 1, picked.length);
  }
  return { x, y, n: picked.length, features, classCounts: countClasses(y, classNames.length), skipped, skippedFolders: [...skippedFolders].sort() };
}

/** Grey values in [0, 1] from RGBA bytes (ITU-R BT.601 luma). */
export function greyFromRgba(rgba, count) {
  const out = new Float32Array(count);
  for (let p = 0; p < count; p += 1) {
    const o = p * 4;
    out[p] = (0.299 * rgba[o] + 0.587 * rgba[o + 1] + 0.114 * rgba[o + 2]) / 255;
  }
  return out;
}

/** Decode one image file on this device and draw it at width × height: grey values in [0, 1]. */
export async function decodeImage(file, width, height) {
  const bitmap = await createImageBitmap(file);
  try {
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.fillStyle = "#fff"; // transparent pixels count as white paper
    context.fillRect(0, 0, width, height);
    context.drawImage(bitmap, 0, 0, width, height);
    return greyFromRgba(context.getImageData(0, 0, width, height).data, width * height);
  } finally {
    bitmap.close();
  }
}

// -- the cache: one IndexedDB record per job ---------------------------------------------------

const DB_NAME = "ccgsc-local-data";
const STORE = "jobs";

const done = (request) =>
  new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });

/** Parsed data and consent per job, in this browser's IndexedDB (never sent anywhere). */
export class LocalDataStore {
  constructor(factory = globalThis.indexedDB) {
    this.factory = factory;
    this.opening = null;
  }

  open() {
    if (!this.factory) return Promise.reject(new LocalDataError("no_data", "This browser has no IndexedDB: local data cannot be kept."));
    if (!this.opening) {
      const request = this.factory.open(DB_NAME, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "job" });
      this.opening = done(request);
    }
    return this.opening;
  }

  async run(mode, act) {
    const db = await this.open();
    const tx = db.transaction(STORE, mode);
    const result = act(tx.objectStore(STORE));
    await new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error || new Error("aborted"));
    });
    return result ? result.result : undefined;
  }

  /** Keep a job's parsed data with the contributor's consent (replacing what was kept). */
  save({ job, jobName = "", schema, source, parsed, consent }) {
    if (consent !== true) return Promise.reject(new LocalDataError("no_data", "Tick the consent box before this data is kept or used."));
    const record = {
      job,
      jobName,
      schema,
      source,
      n: parsed.n,
      features: parsed.features,
      classCounts: parsed.classCounts,
      ...(parsed.missing ? { missing: parsed.missing } : {}), // an analytics job's missing cells per column
      x: parsed.x.buffer.slice(parsed.x.byteOffset, parsed.x.byteOffset + parsed.x.byteLength),
      y: parsed.y.buffer.slice(parsed.y.byteOffset, parsed.y.byteOffset + parsed.y.byteLength),
      consent: true,
      consentedAt: new Date().toISOString(),
    };
    return this.run("readwrite", (store) => store.put(record));
  }

  get(job) {
    return this.run("readonly", (store) => store.get(job));
  }

  /** Every kept job without its data: {job, jobName, schema, source, n, features, classCounts, consent, consentedAt}. */
  async list() {
    const records = (await this.run("readonly", (store) => store.getAll())) || [];
    return records.map(({ x, y, ...summary }) => summary);
  }

  /** Withdraw (or give again) consent for a kept job: without it the data is not used. */
  async setConsent(job, consent) {
    const db = await this.open();
    const tx = db.transaction(STORE, "readwrite");
    const store = tx.objectStore(STORE);
    const record = await done(store.get(job));
    if (record) store.put({ ...record, consent: consent === true, consentedAt: consent === true ? new Date().toISOString() : null });
    await new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
    });
    return Boolean(record);
  }

  erase(job) {
    return this.run("readwrite", (store) => store.delete(job));
  }

  eraseAll() {
    return this.run("readwrite", (store) => store.clear());
  }
}

let defaultStore = null;
export function localDataStore() {
  if (!defaultStore) defaultStore = new LocalDataStore();
  return defaultStore;
}

/**
 * The contributor's data for an FL invite whose data is private: the cached copy for the job,
 * at most `data.max_samples` rows (the first ones).
 * @returns {Promise<{x: Float32Array, y: Int32Array, n: number, features: number}>}
 * @throws {LocalDataError} no_data (nothing kept, or no consent), bad_data (kept data no longer
 *   matches the job's schema, or is damaged)
 */
export async function localShard(job, data = {}, { store = localDataStore() } = {}) {
  const record = await store.get(job);
  if (!record) throw new LocalDataError("no_data", "No local data is kept on this device for this job.");
  if (record.consent !== true) throw new LocalDataError("no_data", "Consent to use the local data kept for this job was withdrawn.");
  if (data.schema && !sameSchema(record.schema, data.schema)) {
    throw new LocalDataError("bad_data", "The job now asks for different data: pick your data again.");
  }
  const features = record.features;
  const x = new Float32Array(record.x);
  const y = new Int32Array(record.y);
  if (y.length !== record.n || x.length !== record.n * features || record.n === 0) {
    throw new LocalDataError("bad_data", "The kept data is damaged: erase it and pick it again.");
  }
  const cap = Number.isInteger(data.max_samples) && data.max_samples > 0 ? data.max_samples : record.n;
  const n = Math.min(record.n, cap);
  return { x: n === record.n ? x : x.slice(0, n * features), y: n === record.n ? y : y.slice(0, n), n, features };
}
