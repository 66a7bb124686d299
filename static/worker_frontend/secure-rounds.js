// Secure FL rounds on the worker page: the SecAgg+ client of each participation, on the wire.
// Twin of the edge worker's ccgsc_worker/secure_rounds.py; no DOM, so Node runs it in tests.
//
// `SecureRounds` keeps one SecureRoundClient (secagg-round.js) per participation of a secure
// round. rounds.js calls `begin(invite)` on the invite (it sends the secagg_advertise), `handle`
// with each secagg_* message the session routes (`{do: "secagg"}`; it sends the answer, if any),
// and `mask(participation, body, timeLeftMs)` once the update is trained: that waits for the
// neighbours' ciphertexts and returns the body to upload, header (norm zeroed) ‖ u32[d]. A
// refused request (sets that overlap, too few neighbours, a bad ciphertext) or an abort forgets
// the round's secrets and sends nothing: the server counts the client as a dropout. A request
// that arrives again (the server re-sends the current phase's request after a reconnect) gets
// the answer the first one got: the client has moved on and would refuse it.
import { SecureRoundClient, maskedBody } from "./secagg-round.js";
import { METRICS_BYTES, RoundError } from "./training.js";

const MAX_TIMER_MS = 2 ** 31 - 1; // setTimeout fires at once beyond this

export class SecureRounds {
  /** `send(message)` sends one JSON control message; `onProblem(text)` reports a refusal. */
  constructor({ send, onProblem = () => {}, randomBytes = undefined }) {
    this.send = send;
    this.onProblem = onProblem;
    this.randomBytes = randomBytes;
    this.rounds = new Map(); // participation -> {client, chain, ready, resolveReady}
  }

  /** The participations whose secrets are held. */
  get active() {
    return [...this.rounds.keys()].sort((a, b) => a - b);
  }

  /** A secure invite: a fresh client; its secagg_advertise is sent (false: refused). */
  begin(invite) {
    let client;
    try {
      client = new SecureRoundClient(invite, this.randomBytes ? { randomBytes: this.randomBytes } : {});
    } catch (err) {
      this.onProblem(`secure round ${invite.participation}: ${err?.message ?? err}`);
      return false;
    }
    let resolveReady;
    const ready = new Promise((resolve) => (resolveReady = resolve));
    const entry = { client, ready, resolveReady, chain: null, answers: new Map() };
    entry.chain = client.advertise().then(
      (message) => this.send(message),
      (err) => this.refuse(invite.participation, entry, "advertise", err),
    );
    this.rounds.set(invite.participation, entry);
    return true;
  }

  /** One phase message, answered in arrival order; resolves when it has been handled. */
  handle(message) {
    const participation = message.participation;
    const entry = this.rounds.get(participation);
    if (!entry) return Promise.resolve();
    entry.chain = entry.chain.then(async () => {
      if (this.rounds.get(participation) !== entry) return;
      if (entry.answers.has(message.type)) {
        const again = entry.answers.get(message.type);
        if (again) this.send(again);
        return;
      }
      try {
        const answer = await entry.client.handle(message);
        entry.answers.set(message.type, answer);
        if (answer) this.send(answer);
      } catch (err) {
        this.refuse(participation, entry, message.type, err);
        return;
      }
      if (message.type === "secagg_ciphertexts") entry.resolveReady();
      else if (message.type !== "secagg_keys") this.end(participation); // unmasked or aborted
    });
    return entry.chain;
  }

  /**
   * The upload body of a trained update, masked: wait (up to `timeLeftMs`) for the neighbours'
   * ciphertexts, then header (norm zeroed) ‖ u32[d]. Throws RoundError `secagg_dropped` when
   * the round's key phases went on without this client (or it refused them).
   */
  async mask(participation, body, timeLeftMs) {
    const entry = this.rounds.get(participation);
    if (entry) {
      let timer;
      const timeout = new Promise((resolve) => (timer = setTimeout(resolve, Math.min(MAX_TIMER_MS, Math.max(0, timeLeftMs)))));
      await Promise.race([entry.ready, timeout]);
      clearTimeout(timer);
    }
    if (!entry || this.rounds.get(participation) !== entry || !entry.client.readyToMask) {
      this.end(participation);
      throw new RoundError("secagg_dropped", "the round's key phases did not include this worker");
    }
    const update = new Float32Array(body.slice(METRICS_BYTES).buffer);
    try {
      const masked = await entry.client.maskUpdate(update);
      return maskedBody(body.subarray(0, METRICS_BYTES), masked);
    } catch (err) {
      this.end(participation);
      throw new RoundError("secagg_dropped", String(err?.message ?? err).slice(0, 300));
    }
  }

  /** Forget a round's client and its secrets; a waiting masker gives up. */
  end(participation) {
    const entry = this.rounds.get(participation);
    if (!entry) return;
    this.rounds.delete(participation);
    entry.client.forget();
    entry.resolveReady();
  }

  /** Forget every round (the page stopped). */
  clear() {
    for (const participation of [...this.rounds.keys()]) this.end(participation);
  }

  refuse(participation, entry, kind, err) {
    this.onProblem(`secure round ${participation}: refused ${kind}: ${err?.message ?? err}`);
    if (this.rounds.get(participation) === entry) this.end(participation);
  }
}
