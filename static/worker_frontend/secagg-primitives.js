// Secure aggregation, browser side: key agreement and shares. X25519, HKDF, the AES-256-CTR
// pair masks, the AES-GCM encryption of shares, and Shamir sharing over GF(2^256 + 297), all
// through WebCrypto and BigInt, byte for byte as jobs/secagg does in Python.
import { bytesToBigInt, concatBytes, hexToBytes, systemRandomBytes, u16be, u32be } from "./secagg-bytes.js";

export const PRIME = (1n << 256n) + 297n; // the smallest prime above 2^256
export const SHARE_BYTES = 33;
export const KEY_BYTES = 32;
export const LABEL_SHARE_KEY = "ccgsc/secagg/v1/share-key";
export const LABEL_PAIR_MASK = "ccgsc/secagg/v1/pair-mask";
export const PHASE_SHARE_KEYS = 1;
export const PHASE_MASKED_INPUT = 2;
const COEFFICIENT_BYTES = 40;
// PKCS#8 wrapping of a raw X25519 private key: WebCrypto imports private keys no other way.
const PKCS8_X25519_PREFIX = hexToBytes("302e020100300506032b656e04220420");

const subtle = globalThis.crypto.subtle;
const encoder = new TextEncoder();

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
