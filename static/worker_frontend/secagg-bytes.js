// Secure aggregation, browser side: the byte helpers every secagg-*.js module shares (hex,
// concatenation, big-endian integers, BigInt <-> bytes) and the random-byte sources each step
// takes as a parameter, so tests can fix them.

const MAX_RANDOM_CALL = 65536;

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
  throw new Error("secagg reads masks as little-endian uint32 and needs a little-endian host");
}

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

export function u32be(value) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value, false);
  return out;
}

export function u16be(value) {
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

export function bytesToBigInt(bytes) {
  return BigInt("0x" + (bytesToHex(bytes) || "0"));
}

export function bigIntToBytes(value, length) {
  const hex = value.toString(16).padStart(length * 2, "0");
  if (hex.length > length * 2) throw new Error("value does not fit");
  return hexToBytes(hex);
}
