// The in-memory site the replay scripts (training-replay.mjs, analytics-replay.mjs) run the
// page's rounds against: files by path, and the chunked upload protocol (chunks checked against
// X-Chunk-SHA256; a chunk can be lost in transit or damaged on the way). Not a test on its own.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

export const ORIGIN = "http://site.test";
export const TOKEN = "t".repeat(40);
const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");
const json = (status, value) => new Response(JSON.stringify(value), { status, headers: { "Content-Type": "application/json" } });

/** The site: files by path, and the upload protocol (chunks checked against X-Chunk-SHA256). */
export function site({ files, drop = [], corrupt = [] }) {
  const served = Object.fromEntries(Object.entries(files).map(([path, file]) => [path, readFileSync(file)]));
  const dropping = new Set(drop);
  const corrupting = new Set(corrupt);
  const log = [];
  const chunkHeaders = [];
  let spec = null;
  const chunks = new Map();
  const state = () => ({
    upload: "u1",
    chunk_count: Math.ceil(spec.total_bytes / spec.chunk_size),
    chunks_received: [...chunks.keys()].sort((a, b) => a - b),
  });
  const body = () => Buffer.concat([...chunks.keys()].sort((a, b) => a - b).map((i) => chunks.get(i)));
  async function fetch(url, init = {}) {
    const { origin, pathname } = new URL(url);
    const method = init.method ?? "GET";
    log.push(`${method} ${pathname}`);
    if (origin !== ORIGIN || init.headers?.Authorization !== `Worker ${TOKEN}`) return json(401, { error: { code: "unauthorized" } });
    if (method === "GET" && pathname in served) return new Response(served[pathname], { status: 200 });
    if (method === "POST" && pathname === "/fl/uploads/") {
      const asked = JSON.parse(init.body);
      if (spec && JSON.stringify(spec) !== JSON.stringify(asked)) return json(400, { error: { code: "bad_request" } });
      spec = asked;
      return json(201, state());
    }
    const put = pathname.match(/^\/fl\/uploads\/u1\/chunks\/(\d+)$/);
    if (method === "PUT" && put) {
      const index = Number(put[1]);
      if (dropping.delete(index)) throw new TypeError("Failed to fetch");
      let data = Buffer.from(init.body);
      chunkHeaders.push(init.headers["X-Chunk-SHA256"]);
      if (corrupting.delete(index)) data = Buffer.concat([Buffer.from([data[0] ^ 0xff]), data.subarray(1)]);
      if (sha256(data) !== init.headers["X-Chunk-SHA256"]) return json(400, { error: { code: "checksum_mismatch" } });
      chunks.set(index, data);
      return json(200, { stored: true });
    }
    if (method === "POST" && pathname === "/fl/uploads/u1/complete") {
      if (chunks.size < state().chunk_count) return json(400, { error: { code: "incomplete" } });
      if (sha256(body()) !== spec.sha256) return json(422, { rejection: { code: "sha256_mismatch" } });
      return json(202, state());
    }
    return json(404, { error: { code: "not_found" } });
  }
  return { fetch, log, chunkHeaders, body };
}

