// Secure aggregation, browser side: the public neighbour graph (SecAgg+). Every client and the
// server derive the same ring from the round's graph seed, and each client masks with, and
// holds shares of, only its k ring neighbours.
import { concatBytes, u32be } from "./secagg-bytes.js";

const subtle = globalThis.crypto.subtle;

export function neighbourCount(nClients) {
  if (nClients <= 1) return 0;
  const ceilLog2 = (nClients - 1).toString(2).length;
  return Math.min(2 * ceilLog2, nClients - 1);
}

export function defaultThreshold(k) {
  return Math.max(1, Math.min(k, Math.floor(k / 2) + 1));
}

function compareBytes(a, b) {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return 0;
}

export async function ringOrder(ids, seed) {
  const keyed = await Promise.all(
    ids.map(async (id) => [
      id,
      new Uint8Array(await subtle.digest("SHA-256", concatBytes(seed, u32be(id)))),
    ]),
  );
  keyed.sort((a, b) => compareBytes(a[1], b[1]));
  return keyed.map(([id]) => id);
}

/** Map id → Set of its k neighbours. */
export async function neighbours(ids, seed, k) {
  const ring = await ringOrder(ids, seed);
  const n = ring.length;
  const graph = new Map();
  if (k >= n - 1) {
    for (const id of ring) graph.set(id, new Set(ring.filter((j) => j !== id)));
    return graph;
  }
  if (k % 2) throw new Error("a sparse graph needs an even k");
  const half = k / 2;
  ring.forEach((id, pos) => {
    const adjacent = new Set();
    for (let off = -half; off <= half; off++) {
      if (off) adjacent.add(ring[(((pos + off) % n) + n) % n]);
    }
    graph.set(id, adjacent);
  });
  return graph;
}
