// The requests tests/secagg/test_js_parity.py sends to static/worker_frontend/secagg*.js, in
// Node (js_client.mjs) and in Chromium alike. Bytes travel as hex, uint32 vectors as hex of LE
// bytes; answers are plain JSON.
import * as noise from "../../static/worker_frontend/dp-noise.js";
import * as s from "../../static/worker_frontend/secagg.js";
import * as bytes from "../../static/worker_frontend/secagg-bytes.js";
import * as keys from "../../static/worker_frontend/secagg-primitives.js";
import * as encoding from "../../static/worker_frontend/secagg-encoding.js";
import * as ring from "../../static/worker_frontend/secagg-graph.js";

const hex = bytes.bytesToHex;
const unhex = bytes.hexToBytes;
const clients = new Map();

function u32FromHex(text) {
  return new Uint32Array(unhex(text).buffer);
}

function u32ToHex(array) {
  return hex(new Uint8Array(array.buffer, array.byteOffset, array.byteLength));
}

function mapOut(map, encode = hex) {
  return Object.fromEntries([...map].map(([id, value]) => [String(id), encode(value)]));
}

function configFrom(c) {
  return s.roundConfig({
    job: c.job,
    roundNumber: c.round_number,
    sessionId: unhex(c.session_id),
    graphSeed: unhex(c.graph_seed),
    clientIds: c.client_ids,
    dimension: c.dimension,
    threshold: c.threshold,
  });
}

export const handlers = {
  async skellam(r) {
    const buffer = unhex(r.random);
    let used = 0;
    const read = (n) => {
      if (used + n > buffer.length) throw new Error("fixed random bytes exhausted");
      used += n;
      return buffer.slice(used - n, used);
    };
    const shares = r.variances.map((v) => [...noise.skellamShare(r.dimension, v, read)]);
    return { shares, used };
  },
  async primitives(r) {
    const random = bytes.bytesReader(unhex(r.random));
    const a = await keys.keypairFromSeed(unhex(r.seed_a));
    const b = await keys.keypairFromSeed(unhex(r.seed_b));
    const shared = await keys.agree(a.privateBytes, b.publicBytes);
    const info = keys.derivationInfo({
      label: keys.LABEL_PAIR_MASK,
      idA: r.id_a,
      idB: r.id_b,
      job: r.job,
      roundNumber: r.round_number,
      phase: keys.PHASE_MASKED_INPUT,
    });
    const key = await keys.deriveKey({ shared, sessionId: unhex(r.session_id), info });
    const mask = await keys.expandMask(key, r.length, r.start);
    const shares = keys.shamirShare([unhex(r.secret_a), unhex(r.secret_b)], r.xs, r.t, random);
    const ciphertext = await keys.encryptShares({
      key,
      sender: r.id_a,
      receiver: r.id_b,
      job: r.job,
      roundNumber: r.round_number,
      plaintext: unhex(r.plaintext),
    });
    const encoded = encoding.encode(Float64Array.from(r.values), {
      scale: encoding.scaleFor(r.n_clients, r.bound),
      bound: r.bound,
      randomBytes: random,
    });
    const graph = await ring.neighbours(r.graph_ids, unhex(r.graph_seed), r.k);
    return {
      public_a: hex(a.publicBytes),
      shared: hex(shared),
      info: hex(info),
      key: hex(key),
      mask: u32ToHex(mask),
      shares: shares.map((row) => row.map((v) => v.toString(16))),
      ciphertext: hex(ciphertext),
      scale: encoding.scaleFor(r.n_clients, r.bound),
      encoded: u32ToHex(encoded),
      graph: Object.fromEntries(
        [...graph].map(([id, set]) => [id, [...set].sort((x, y) => x - y)]),
      ),
      neighbour_counts: r.graph_ns.map(ring.neighbourCount),
      reconstructed: keys
        .shamirReconstruct(
          r.xs.slice(0, r.t),
          shares.slice(0, r.t).map((row) => row[0]),
        )
        .toString(16),
    };
  },
  async client(r) {
    const random = r.random ? bytes.bytesReader(unhex(r.random)) : bytes.systemRandomBytes;
    clients.set(r.client_id, new s.SecAggClient(configFrom(r.config), r.client_id, random));
    return {};
  },
  async advertise(r) {
    const m = await clients.get(r.client_id).advertiseKeys();
    return { cipher_public: hex(m.cipher_public), mask_public: hex(m.mask_public) };
  },
  async share(r) {
    const keys = Object.fromEntries(
      Object.entries(r.public_keys).map(([id, k]) => [
        id,
        { cipher_public: unhex(k.cipher_public), mask_public: unhex(k.mask_public) },
      ]),
    );
    const m = await clients.get(r.client_id).shareKeys(keys);
    return { ciphertexts: mapOut(m.ciphertexts) };
  },
  async masked(r) {
    const cts = Object.fromEntries(Object.entries(r.ciphertexts).map(([id, c]) => [id, unhex(c)]));
    const m = await clients.get(r.client_id).maskedInput(cts, u32FromHex(r.encoded));
    return { masked: u32ToHex(m.masked) };
  },
  async unmask(r) {
    const m = clients.get(r.client_id).unmask(r.alive, r.dropped);
    return { shares: mapOut(m.shares) };
  },
};
