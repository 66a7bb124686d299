// A browser client of a secure FL round, driven by the protocol's secagg_* messages.
// DOM-free and network-free, on top of secagg.js: the page (or a Web Worker) feeds it the
// round_invite and every secagg_* message of that participation, sends what it returns as text
// frames, and uploads maskUpdate()'s bytes after the 32-byte metrics header through the usual
// chunked upload. The twin of the edge worker's ccgsc_worker/secagg/wire.py: same messages,
// same bytes (tests/secagg/test_wire_round.py runs both in one round). See docs/security.md.

import { addShare, noiseShare } from "./dp-noise.js";
import { RequestRefused, SecAggClient, roundConfig } from "./secagg.js";
import { systemRandomBytes } from "./secagg-bytes.js";
import { encode } from "./secagg-encoding.js";

const PROTOCOL_VERSION = 1;

/** Unpadded base64url of bytes. */
export function b64encode(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** Inverse of b64encode; throws on anything else. */
export function b64decode(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text)) {
    throw new RequestRefused("not unpadded base64url");
  }
  const padding = "=".repeat((4 - (text.length % 4)) % 4);
  const padded = text.replaceAll("-", "+").replaceAll("_", "/") + padding;
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

function message(type, fields) {
  return { v: PROTOCOL_VERSION, type, ...fields };
}

/** One participation of a secure round. ``invite`` is the parsed round_invite (with its
 *  ``secagg`` block). Methods return the message to send, or null when there is nothing to
 *  send; a refused request throws RequestRefused and forgets the round (the server then counts
 *  this client as a dropout). */
export class SecureRoundClient {
  constructor(invite, { randomBytes = systemRandomBytes } = {}) {
    const block = invite.secagg;
    if (!block) throw new RequestRefused("not a secure round");
    this.participation = invite.participation;
    this.scale = block.scale;
    this.bound = block.bound;
    this.noise = block.noise ?? null;
    this.randomBytes = randomBytes;
    const clientIds = Array.from({ length: block.clients }, (_, i) => i + 1);
    const config = roundConfig({
      job: invite.job,
      roundNumber: invite.round,
      sessionId: b64decode(block.session),
      graphSeed: b64decode(block.graph_seed),
      clientIds,
      dimension: invite.analytics ? invite.analytics.dimension : invite.model.parameters, // an analytics vector, or an update
      threshold: block.threshold,
    });
    this.client = new SecAggClient(config, block.client, randomBytes);
    this.ciphertexts = null;
  }

  get phase() {
    return this.client ? this.client.phase : "done";
  }

  /** The neighbours' ciphertexts arrived: maskUpdate may run. */
  get readyToMask() {
    return this.ciphertexts !== null && this.phase === "masked_input";
  }

  /** Phase 0: the secagg_advertise message (send it on the invite). */
  async advertise() {
    const keys = await this.client.advertiseKeys();
    return message("secagg_advertise", {
      participation: this.participation,
      cipher_public: b64encode(keys.cipher_public),
      mask_public: b64encode(keys.mask_public),
    });
  }

  /** Any server secagg_* message of this participation → the answer to send, or null. */
  async handle(incoming) {
    try {
      switch (incoming.type) {
        case "secagg_keys":
          return await this.onKeys(incoming);
        case "secagg_ciphertexts":
          this.onCiphertexts(incoming);
          return null;
        case "secagg_unmask":
          return this.onUnmask(incoming);
        default:
          this.forget();
          return null;
      }
    } catch (error) {
      this.forget();
      throw error;
    }
  }

  async onKeys(incoming) {
    const keys = new Map();
    for (const item of incoming.keys) {
      const cipher = b64decode(item.cipher_public);
      const mask = b64decode(item.mask_public);
      if (cipher.length !== 32 || mask.length !== 32) throw new RequestRefused("keys are 32 bytes");
      keys.set(item.client, { cipher_public: cipher, mask_public: mask });
    }
    if (keys.size !== incoming.keys.length) throw new RequestRefused("a neighbour appears twice");
    const shared = await this.client.shareKeys(keys);
    const ciphertexts = [...shared.ciphertexts]
      .sort((a, b) => a[0] - b[0])
      .map(([client, ciphertext]) => ({ client, ciphertext: b64encode(ciphertext) }));
    return message("secagg_share_keys", { participation: this.participation, ciphertexts });
  }

  onCiphertexts(incoming) {
    if (this.phase !== "masked_input") {
      throw new RequestRefused(`ciphertexts while in ${this.phase}`);
    }
    const ciphertexts = new Map(
      incoming.ciphertexts.map((item) => [item.client, b64decode(item.ciphertext)]),
    );
    if (ciphertexts.size !== incoming.ciphertexts.length) {
      throw new RequestRefused("a neighbour appears twice");
    }
    this.ciphertexts = ciphertexts;
  }

  /** Phase 2: clip to ±bound, encode in Z_2^32, add the distributed-DP share when the invite
   *  asks for one, and mask → u32[d] little-endian bytes. */
  async maskUpdate(update) {
    if (!this.readyToMask) throw new RequestRefused("no ciphertexts yet");
    let encoded = encode(update, {
      scale: this.scale,
      bound: this.bound,
      randomBytes: this.randomBytes,
    });
    if (this.noise) {
      // distributed DP: the invite's share, added in Z_2^32 before the masks
      encoded = addShare(encoded, noiseShare(encoded.length, this.noise, this.randomBytes));
    }
    const { masked } = await this.client.maskedInput(this.ciphertexts, encoded);
    this.ciphertexts = null;
    return new Uint8Array(masked.buffer, masked.byteOffset, masked.byteLength);
  }

  onUnmask(incoming) {
    const answer = this.client.unmask(incoming.alive, incoming.dropped);
    const shares = [...answer.shares]
      .sort((a, b) => a[0] - b[0])
      .map(([client, share]) => ({ client, share: b64encode(share) }));
    this.forget();
    return message("secagg_unmask_shares", { participation: this.participation, shares });
  }

  /** Drop every secret of the round. */
  forget() {
    this.ciphertexts = null;
    this.client = null;
  }
}

/** The upload body of a masked update: the 32-byte metrics header (norm zeroed), then u32[d]. */
export function maskedBody(header, maskedBytes) {
  const out = new Uint8Array(header.length + maskedBytes.length);
  out.set(header, 0);
  out.fill(0, 24, 32);
  out.set(maskedBytes, header.length);
  return out;
}
