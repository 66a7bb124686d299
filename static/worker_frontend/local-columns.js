// A contributor's own rows for federated analytics jobs, kept on this device: the named numeric
// columns of a CSV, read exactly as the edge worker reads its `--data` file
// (edge_worker/ccgsc_worker/analytics_round.py), so the page and the edge worker summarise the
// same file into the same bytes. The cache and consent are local-data.js's (a record whose
// schema is `{format: "columns", columns: [names]}`); nothing here sends anything anywhere.
//
// The file: a header row, then one record per row. Each requested column is found by its name
// in the header (the first one of that name); other columns are ignored. A cell is a number
// when, without surrounding spaces, it is a plain decimal ([+-]digits[.digits][e[+-]digits]);
// an empty, non-numeric or non-finite cell, or one past the end of a short record, is missing
// (NaN: the kernel does not count it). Blank lines are skipped. Only the first `max_rows`
// records are read.
import { LIMITS, LocalDataError, csvRecords, localDataStore } from "./local-data.js";

export const COLUMNS_FORMAT = "columns";
const DECIMAL = /^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$/;

const bad = (message, line) => new LocalDataError("bad_data", line ? `Line ${line}: ${message}` : message, line);
const quoted = (names) => names.map((name) => `“${name}”`).join(", ");

/** A cell's value: a finite plain decimal, otherwise NaN (missing). */
export function cellValue(raw) {
  const text = String(raw).trim();
  if (!DECIMAL.test(text)) return NaN;
  const value = Number(text);
  return Number.isFinite(value) ? value : NaN;
}

/** One sentence a contributor can act on: what an analytics job's columns ask for. */
export function describeColumns(schema) {
  const n = schema.columns.length;
  return (
    `A CSV file with a header row and ${n === 1 ? "a numeric column" : `${n} numeric columns`} named ${quoted(schema.columns)}; ` +
    "other columns are ignored, and an empty or non-numeric cell counts as missing."
  );
}

/**
 * Read the named columns of a CSV's first `maxRows` records as f32 rows.
 * @returns {{x: Float32Array, y: Int32Array, n: number, features: number, classCounts: number[],
 *   missing: number[], capped: boolean}}  x is row-major n × columns; missing counts per column
 * @throws {LocalDataError} bad_data: no header, a column missing from it, no rows, too many rows
 */
export function parseColumnsCsv(text, schema, { maxRows = LIMITS.rows, limits = LIMITS } = {}) {
  if (typeof text !== "string") throw bad("the file could not be read as text.");
  if (text.length > limits.csvBytes) throw bad(`the file is larger than ${Math.round(limits.csvBytes / 1048576)} MB.`);
  const names = schema.columns;
  const width = names.length;
  const keep = Math.min(limits.rows, Math.floor(limits.cells / width));
  const records = csvRecords(text);
  const first = records.next();
  if (first.done) throw bad("the file is empty.");
  const header = first.value.fields.map((cell) => cell.trim());
  const absent = names.filter((name) => !header.includes(name));
  if (absent.length) throw bad(`the header has no column named ${quoted(absent)}.`, 1);
  const where = names.map((name) => header.indexOf(name));
  let x = new Float32Array(Math.min(maxRows, keep, 1024) * width);
  const missing = new Array(width).fill(0);
  let n = 0;
  let capped = false;
  for (const { line, fields } of records) {
    if (n >= maxRows) {
      capped = true;
      break;
    }
    if (n >= keep) throw bad(`the file has more than ${keep.toLocaleString("en")} data rows, the most this page keeps.`, line);
    if ((n + 1) * width > x.length) {
      const grown = new Float32Array(Math.min(Math.min(maxRows, keep) * width, x.length * 2));
      grown.set(x);
      x = grown;
    }
    for (let j = 0; j < width; j += 1) {
      const value = where[j] < fields.length ? cellValue(fields[where[j]]) : NaN;
      if (Number.isNaN(value)) missing[j] += 1;
      x[n * width + j] = value;
    }
    n += 1;
  }
  if (n === 0) throw bad("the file has a header but no data rows.");
  return { x: x.slice(0, n * width), y: new Int32Array(0), n, features: width, classCounts: [], missing, capped };
}

/**
 * The contributor's rows for an analytics invite on local data: the kept record for the job,
 * its columns in the query's order, at most `query.max_rows` rows (the first ones).
 * @returns {Promise<{x: Float32Array, n: number, features: number}>}
 * @throws {LocalDataError} no_data (nothing kept, or no consent), bad_data (the kept columns are
 *   not the ones the job now asks for, or the record is damaged)
 */
export async function localColumns(job, query, { store = localDataStore() } = {}) {
  const record = await store.get(job);
  if (!record) throw new LocalDataError("no_data", "No local data is kept on this device for this job.");
  if (record.consent !== true) throw new LocalDataError("no_data", "Consent to use the local data kept for this job was withdrawn.");
  const asked = query.columns.map((column) => column.name);
  const kept = record.schema?.format === COLUMNS_FORMAT ? record.schema.columns : null;
  if (!kept || JSON.stringify(kept) !== JSON.stringify(asked)) {
    throw new LocalDataError("bad_data", "The job now asks for different columns: pick your data again.");
  }
  const x = new Float32Array(record.x);
  if (record.features !== asked.length || x.length !== record.n * asked.length || record.n === 0) {
    throw new LocalDataError("bad_data", "The kept data is damaged: erase it and pick it again.");
  }
  const n = Math.min(record.n, Number(query.max_rows));
  return { x: n === record.n ? x : x.slice(0, n * asked.length), n, features: asked.length };
}
