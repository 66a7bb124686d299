// Secure aggregation (SecAgg+), browser side: the twin of the Python package jobs/secagg.
// No DOM and no network: WebCrypto (X25519, HKDF, AES-CTR, AES-GCM) and BigInt Shamir, so it
// runs in a page, a Web Worker and Node 20. Given the same keys, inputs and random bytes it
// produces the same bytes as Python (tests/secagg/test_js_parity.py checks it).

export const PRIME = (1n << 256n) + 297n; // the smallest prime above 2^256
export const SHARE_BYTES = 33;
export const KEY_BYTES = 32;
export const LABEL_SHARE_KEY = "ccgsc/secagg/v1/share-key";
export const LABEL_PAIR_MASK = "ccgsc/secagg/v1/pair-mask";
export const PHASE_SHARE_KEYS = 1;
export const PHASE_MASKED_INPUT = 2;
export const PHASES = Object.freeze(["advertise", "share", "masked_input", "unmask"]);
const COEFFICIENT_BYTES = 40;
const HALF = 2 ** 31 - 1;
// PKCS#8 wrapping of a raw X25519 private key: WebCrypto imports private keys no other way.
const PKCS8_X25519_PREFIX = hexToBytes("302e020100300506032b656e04220420");
const MAX_RANDOM_CALL = 65536;

const subtle = globalThis.crypto.subtle;
const encoder = new TextEncoder();

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
  throw new Error("secagg.js reads masks as little-endian uint32 and needs a little-endian host");
}

export class RequestRefused extends Error {}

export function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
  return out;
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function concatBytes(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function u32be(value) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value, false);
  return out;
}

function u16be(value) {
  const out = new Uint8Array(2);
  new DataView(out.buffer).setUint16(0, value, false);
  return out;
}

/** Cryptographically secure random bytes, any length. */
export function systemRandomBytes(n) {
  const out = new Uint8Array(n);
  for (let at = 0; at < n; at += MAX_RANDOM_CALL) {
    globalThis.crypto.getRandomValues(out.subarray(at, Math.min(n, at + MAX_RANDOM_CALL)));
  }
  return out;
}

/** A deterministic byte source reading a fixed buffer in order (tests and parity checks). */
export function bytesReader(buffer) {
  let at = 0;
  return (n) => {
    if (at + n > buffer.length) throw new Error("fixed random bytes exhausted");
    const out = buffer.slice(at, at + n);
    at += n;
    return out;
  };
}

// X25519, HKDF, AES --------------------------------------------------------------------------

function importPrivate(privateBytes) {
  return subtle.importKey(
    "pkcs8",
    concatBytes(PKCS8_X25519_PREFIX, privateBytes),
    { name: "X25519" },
    true,
    ["deriveBits"],
  );
}

function base64UrlToBytes(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** {privateBytes, publicBytes} raw 32-byte X25519 keys from 32 random bytes. */
export async function keypairFromSeed(seed) {
  const key = await importPrivate(seed);
  const jwk = await subtle.exportKey("jwk", key);
  return { privateBytes: Uint8Array.from(seed), publicBytes: base64UrlToBytes(jwk.x) };
}

export function keypairGenerate(randomBytes = systemRandomBytes) {
  return keypairFromSeed(randomBytes(KEY_BYTES));
}

/** The X25519 shared secret (32 bytes). */
export async function agree(privateBytes, peerPublic) {
  const privateKey = await importPrivate(privateBytes);
  const publicKey = await subtle.importKey("raw", peerPublic, { name: "X25519" }, false, []);
  return new Uint8Array(
    await subtle.deriveBits({ name: "X25519", public: publicKey }, privateKey, 256),
  );
}

/** label ‖ 0 ‖ u32 lower id ‖ u32 higher id ‖ u16 len ‖ job ‖ u32 round ‖ u8 phase. */
export function derivationInfo({ label, idA, idB, job, roundNumber, phase }) {
  const [low, high] = idA < idB ? [idA, idB] : [idB, idA];
  const jobBytes = encoder.encode(job);
  return concatBytes(
    encoder.encode(label),
    new Uint8Array([0]),
    u32be(low),
    u32be(high),
    u16be(jobBytes.length),
    jobBytes,
    u32be(roundNumber),
    new Uint8Array([phase]),
  );
}

/** HKDF-SHA256(shared, salt = session id, info) → 32-byte key. */
export async function deriveKey({ shared, sessionId, info }) {
  const key = await subtle.importKey("raw", shared, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(
    await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: sessionId, info }, key, 256),
  );
}

/** Coordinates [start, start+length) of the AES-256-CTR keystream as little-endian uint32. */
export async function expandMask(keyBytes, length, start = 0) {
  if (length <= 0) return new Uint32Array(0);
  const firstBlock = Math.floor(start / 4);
  const skip = start % 4;
  const blocks = Math.ceil((skip + length) / 4);
  const counter = new Uint8Array(16);
  let value = BigInt(firstBlock);
  for (let i = 15; i >= 0 && value > 0n; i--) {
    counter[i] = Number(value & 0xffn);
    value >>= 8n;
  }
  const key = await subtle.importKey("raw", keyBytes, "AES-CTR", false, ["encrypt"]);
  const stream = await subtle.encrypt(
    { name: "AES-CTR", counter, length: 128 },
    key,
    new Uint8Array(blocks * 16),
  );
  return new Uint32Array(stream, skip * 4, length);
}

export function shareNonce(sender, receiver) {
  return concatBytes(u32be(sender), u32be(receiver), new Uint8Array(4));
}

export function shareAssociatedData({ sender, receiver, job, roundNumber }) {
  const jobBytes = encoder.encode(job);
  return concatBytes(
    u32be(sender),
    u32be(receiver),
    u16be(jobBytes.length),
    jobBytes,
    u32be(roundNumber),
  );
}

async function gcm(operation, { key, sender, receiver, job, roundNumber, data }) {
  const aes = await subtle.importKey("raw", key, "AES-GCM", false, [operation]);
  const params = {
    name: "AES-GCM",
    iv: shareNonce(sender, receiver),
    additionalData: shareAssociatedData({ sender, receiver, job, roundNumber }),
    tagLength: 128,
  };
  return new Uint8Array(await subtle[operation](params, aes, data));
}

export function encryptShares({ key, sender, receiver, job, roundNumber, plaintext }) {
  return gcm("encrypt", { key, sender, receiver, job, roundNumber, data: plaintext });
}

export function decryptShares({ key, sender, receiver, job, roundNumber, ciphertext }) {
  return gcm("decrypt", { key, sender, receiver, job, roundNumber, data: ciphertext });
}

// Shamir over GF(2^256 + 297) -----------------------------------------------------------------

function mod(a) {
  const r = a % PRIME;
  return r < 0n ? r + PRIME : r;
}

function modPow(base, exponent) {
  let result = 1n;
  let b = mod(base);
  let e = exponent;
  while (e > 0n) {
    if (e & 1n) result = (result * b) % PRIME;
    b = (b * b) % PRIME;
    e >>= 1n;
  }
  return result;
}

function modInverse(a) {
  return modPow(a, PRIME - 2n);
}

export function bytesToBigInt(bytes) {
  return BigInt("0x" + (bytesToHex(bytes) || "0"));
}

export function bigIntToBytes(value, length) {
  const hex = value.toString(16).padStart(length * 2, "0");
  if (hex.length > length * 2) throw new Error("value does not fit");
  return hexToBytes(hex);
}

/** Shares of each 32-byte secret for holders at xs: shares[row][column] as BigInt. Coefficients
 *  are read secret by secret, 40 random bytes each, as the Python twin does. */
export function shamirShare(secrets, xs, threshold, randomBytes = systemRandomBytes) {
  if (threshold < 1 || threshold > xs.length) throw new Error("bad threshold");
  if (new Set(xs).size !== xs.length || xs.some((x) => x === 0)) throw new Error("bad xs");
  const coefficients = secrets.map((secret) => {
    if (secret.length !== KEY_BYTES) throw new Error("secrets are 32 bytes");
    const column = [bytesToBigInt(secret)];
    for (let e = 1; e < threshold; e++) {
      column.push(bytesToBigInt(randomBytes(COEFFICIENT_BYTES)) % PRIME);
    }
    return column;
  });
  return xs.map((x) => {
    const bx = BigInt(x);
    const powers = [1n];
    for (let e = 1; e < threshold; e++) powers.push((powers[e - 1] * bx) % PRIME);
    return coefficients.map((column) => {
      let acc = 0n;
      for (let e = 0; e < threshold; e++) acc += powers[e] * column[e];
      return acc % PRIME;
    });
  });
}

/** The secret (BigInt) from shares at distinct xs, by Lagrange interpolation at 0. */
export function shamirReconstruct(xs, shares) {
  const bx = xs.map(BigInt);
  let secret = 0n;
  for (let i = 0; i < bx.length; i++) {
    let numerator = 1n;
    let denominator = 1n;
    for (let j = 0; j < bx.length; j++) {
      if (i === j) continue;
      numerator = (numerator * bx[j]) % PRIME;
      denominator = mod(denominator * (bx[j] - bx[i]));
    }
    secret = (secret + shares[i] * numerator * modInverse(denominator)) % PRIME;
  }
  return secret;
}

// Encoding into Z_2^32 --------------------------------------------------------------------------

/** The largest scale at which n clients' values in [−bound, bound] sum without wrapping. */
export function scaleFor(nClients, bound) {
  if (nClients < 1 || !(bound > 0)) throw new Error("need clients and a positive bound");
  const scale = (HALF / nClients - 1) / bound;
  if (scale <= 0) throw new Error("too many clients for 32 bits");
  return scale;
}

/** L2 clipping (jobs/privacy/clipping.py): {clipped, withinBound}; the input is not modified. */
export function clipL2(values, clipNorm) {
  if (!(clipNorm > 0)) throw new Error("clipNorm must be positive");
  let squares = 0;
  for (let i = 0; i < values.length; i++) squares += values[i] * values[i];
  const norm = Math.sqrt(squares);
  const clipped = Float64Array.from(values);
  if (norm <= clipNorm) return { clipped, withinBound: true };
  const factor = clipNorm / norm;
  for (let i = 0; i < clipped.length; i++) clipped[i] *= factor;
  return { clipped, withinBound: false };
}

/** The clipped update with the adaptive-clipping bit (1 when within the bound) appended. */
export function withClipBit(clipped, withinBound) {
  const out = new Float64Array(clipped.length + 1);
  out.set(clipped);
  out[clipped.length] = withinBound ? 1 : 0;
  return out;
}

/** Clip to [−bound, bound], scale, round stochastically (offsets from randomBytes(4·d)). */
export function encode(values, { scale, bound, randomBytes = systemRandomBytes }) {
  const offsets = new Uint32Array(randomBytes(4 * values.length).slice().buffer);
  const out = new Uint32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const clipped = Math.min(Math.max(values[i], -bound), bound);
    out[i] = Math.floor(clipped * scale + offsets[i] / 2 ** 32) >>> 0;
  }
  return out;
}

export function decodeSum(total, scale) {
  return Float64Array.from(new Int32Array(total.buffer, total.byteOffset, total.length), (v) =>
    v / scale,
  );
}

// The public neighbour graph --------------------------------------------------------------------

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

// The client state machine ----------------------------------------------------------------------

/** Round parameters: {job, roundNumber, sessionId, graphSeed, clientIds, dimension, threshold?,
 *  k?}; threshold and k default as in Python. */
export function roundConfig(params) {
  const k = params.k ?? neighbourCount(params.clientIds.length);
  const threshold = params.threshold || defaultThreshold(k);
  return Object.freeze({ ...params, k, threshold });
}

async function pairKey(config, { shared, idA, idB, label, phase }) {
  const info = derivationInfo({
    label,
    idA,
    idB,
    job: config.job,
    roundNumber: config.roundNumber,
    phase,
  });
  return deriveKey({ shared, sessionId: config.sessionId, info });
}

function entries(mapping) {
  const pairs = mapping instanceof Map ? [...mapping] : Object.entries(mapping);
  return pairs.map(([id, value]) => [Number(id), value]).sort((a, b) => a[0] - b[0]);
}

export class SecAggClient {
  constructor(config, clientId, randomBytes = systemRandomBytes) {
    this.config = config;
    this.clientId = clientId;
    this.randomBytes = randomBytes;
    this.phase = "advertise";
    this.peerKeys = new Map();
    this.peerShares = new Map();
    this.maskingPeers = [];
  }

  expect(phase) {
    if (this.phase !== phase) throw new RequestRefused(`phase ${phase} while in ${this.phase}`);
  }

  /** Phase 0: {client_id, cipher_public, mask_public}. */
  async advertiseKeys() {
    this.expect("advertise");
    if (!this.config.clientIds.includes(this.clientId)) throw new RequestRefused("not in cohort");
    const graph = await neighbours(this.config.clientIds, this.config.graphSeed, this.config.k);
    this.neighbours = graph.get(this.clientId);
    const cipher = await keypairGenerate(this.randomBytes);
    const mask = await keypairGenerate(this.randomBytes);
    this.cipherPrivate = cipher.privateBytes;
    this.maskPrivate = mask.privateBytes;
    this.phase = "share";
    return {
      client_id: this.clientId,
      cipher_public: cipher.publicBytes,
      mask_public: mask.publicBytes,
    };
  }

  /** Phase 1: publicKeys id → {cipher_public, mask_public}; returns encrypted shares. */
  async shareKeys(publicKeys) {
    this.expect("share");
    const pairs = entries(publicKeys);
    const holders = pairs.map(([id]) => id);
    if (holders.some((id) => !this.neighbours.has(id))) {
      throw new RequestRefused("public keys of clients that are not my neighbours");
    }
    if (holders.length < this.config.threshold) throw new RequestRefused("too few neighbours");
    this.peerKeys = new Map(pairs);
    this.selfSeed = this.randomBytes(KEY_BYTES);
    const shares = shamirShare(
      [this.selfSeed, this.maskPrivate],
      holders,
      this.config.threshold,
      this.randomBytes,
    );
    const ciphertexts = new Map();
    for (let row = 0; row < holders.length; row++) {
      const holder = holders[row];
      const key = await pairKey(this.config, {
        shared: await agree(this.cipherPrivate, this.peerKeys.get(holder).cipher_public),
        idA: this.clientId,
        idB: holder,
        label: LABEL_SHARE_KEY,
        phase: PHASE_SHARE_KEYS,
      });
      const plaintext = concatBytes(
        bigIntToBytes(shares[row][0], SHARE_BYTES),
        bigIntToBytes(shares[row][1], SHARE_BYTES),
      );
      ciphertexts.set(
        holder,
        await encryptShares({
          key,
          sender: this.clientId,
          receiver: holder,
          job: this.config.job,
          roundNumber: this.config.roundNumber,
          plaintext,
        }),
      );
    }
    this.phase = "masked_input";
    return { client_id: this.clientId, ciphertexts };
  }

  /** Phase 2: ciphertexts sender → bytes; encoded Uint32Array(dimension). */
  async maskedInput(ciphertexts, encoded) {
    this.expect("masked_input");
    const pairs = entries(ciphertexts);
    if (pairs.some(([id]) => !this.peerKeys.has(id))) {
      throw new RequestRefused("shares from clients that did not advertise to me");
    }
    if (pairs.length < this.config.threshold) throw new RequestRefused("too few neighbours");
    if (!(encoded instanceof Uint32Array) || encoded.length !== this.config.dimension) {
      throw new Error(`encoded input must be a Uint32Array(${this.config.dimension})`);
    }
    for (const [sender, ciphertext] of pairs) {
      const key = await pairKey(this.config, {
        shared: await agree(this.cipherPrivate, this.peerKeys.get(sender).cipher_public),
        idA: this.clientId,
        idB: sender,
        label: LABEL_SHARE_KEY,
        phase: PHASE_SHARE_KEYS,
      });
      const plaintext = await decryptShares({
        key,
        sender,
        receiver: this.clientId,
        job: this.config.job,
        roundNumber: this.config.roundNumber,
        ciphertext,
      });
      this.peerShares.set(sender, [
        bytesToBigInt(plaintext.subarray(0, SHARE_BYTES)),
        bytesToBigInt(plaintext.subarray(SHARE_BYTES)),
      ]);
    }
    this.maskingPeers = pairs.map(([id]) => id);
    const masked = Uint32Array.from(encoded);
    addInPlace(masked, await expandMask(this.selfSeed, masked.length), 1);
    for (const peer of this.maskingPeers) {
      const key = await pairKey(this.config, {
        shared: await agree(this.maskPrivate, this.peerKeys.get(peer).mask_public),
        idA: this.clientId,
        idB: peer,
        label: LABEL_PAIR_MASK,
        phase: PHASE_MASKED_INPUT,
      });
      addInPlace(masked, await expandMask(key, masked.length), this.clientId < peer ? 1 : -1);
    }
    this.phase = "unmask";
    return { client_id: this.clientId, masked };
  }

  /** Phase 3: refuses overlapping sets, or fewer than t alive neighbours. */
  unmask(alive, dropped) {
    this.expect("unmask");
    const aliveSet = new Set(alive.map(Number));
    const droppedSet = new Set(dropped.map(Number));
    if ([...aliveSet].some((id) => droppedSet.has(id))) {
      throw new RequestRefused("alive and dropped sets overlap");
    }
    if (!aliveSet.has(this.clientId)) throw new RequestRefused("I am not in the alive set");
    const aliveNeighbours = [...this.neighbours].filter((id) => aliveSet.has(id)).length;
    if (aliveNeighbours < this.config.threshold) {
      throw new RequestRefused("fewer than t of my neighbours are alive");
    }
    const shares = new Map();
    for (const peer of this.maskingPeers) {
      const [selfShare, keyShare] = this.peerShares.get(peer);
      if (aliveSet.has(peer)) shares.set(peer, bigIntToBytes(selfShare, SHARE_BYTES));
      else if (droppedSet.has(peer)) shares.set(peer, bigIntToBytes(keyShare, SHARE_BYTES));
    }
    this.phase = "done";
    return { client_id: this.clientId, shares };
  }
}

/** target += sign · mask in Z_2^32 (both Uint32Array of one length). */
export function addInPlace(target, mask, sign) {
  if (sign > 0) for (let i = 0; i < target.length; i++) target[i] += mask[i];
  else for (let i = 0; i < target.length; i++) target[i] -= mask[i];
}
