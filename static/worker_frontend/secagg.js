// Secure aggregation (SecAgg+), browser side: the twin of the Python package jobs/secagg.
// This module is the client's round state machine (advertise, share, masked input, unmask); the
// maths it runs sits in secagg-primitives.js (key agreement, shares), secagg-encoding.js (Z_2^32),
// secagg-graph.js (neighbours) and secagg-bytes.js. No DOM and no network: WebCrypto and BigInt,
// so it runs in a page, a Web Worker and Node 20. Given the same keys, inputs and random bytes it
// produces the same bytes as Python (tests/secagg/test_js_parity.py checks it).
import { bigIntToBytes, bytesToBigInt, concatBytes, systemRandomBytes } from "./secagg-bytes.js";
import {
  KEY_BYTES,
  LABEL_PAIR_MASK,
  LABEL_SHARE_KEY,
  PHASE_MASKED_INPUT,
  PHASE_SHARE_KEYS,
  SHARE_BYTES,
  agree,
  decryptShares,
  deriveKey,
  derivationInfo,
  encryptShares,
  expandMask,
  keypairGenerate,
  shamirShare,
} from "./secagg-primitives.js";
import { addInPlace } from "./secagg-encoding.js";
import { defaultThreshold, neighbourCount, neighbours } from "./secagg-graph.js";

export const PHASES = Object.freeze(["advertise", "share", "masked_input", "unmask"]);

export class RequestRefused extends Error {}

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
