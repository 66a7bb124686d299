// The page's secure rounds (static/worker_frontend/secure-rounds.js, driven by rounds.js): each
// participation advertises on its invite, answers the key and unmask phases in order, masks its
// trained body once the neighbours' ciphertexts are in (header norm zeroed, u32[d] after it),
// and forgets its secrets on an abort, a refusal, or a round that went on without it. The
// unmasked sum is checked with the server in tests/e2e/test_fl_browser_secure_rounds.py.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { b64encode } from "../../static/worker_frontend/secagg-round.js";
import { SecureRounds } from "../../static/worker_frontend/secure-rounds.js";
import { RoundError } from "../../static/worker_frontend/training.js";

const JOB = "00000000-0000-4000-8000-0000000000f1";
const D = 6;
const block = (client, clients = 3) => ({
  client,
  clients,
  threshold: 2,
  session: b64encode(new Uint8Array(32).fill(7)),
  graph_seed: b64encode(new Uint8Array(32).fill(9)),
  scale: 1000,
  bound: 1,
});
const invite = (client, clients = 3) => ({ job: JOB, round: 4, participation: 100 + client, model: { parameters: D }, secagg: block(client, clients) });

/** One page per client: its SecureRounds and what it sent. */
function pages(count) {
  return Array.from({ length: count }, (_, i) => {
    const sent = [];
    const problems = [];
    const rounds = new SecureRounds({ send: (m) => sent.push(m), onProblem: (t) => problems.push(t) });
    return { client: i + 1, sent, problems, rounds };
  });
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

function body(values) {
  const out = new Uint8Array(32 + 4 * values.length);
  const view = new DataView(out.buffer);
  view.setUint32(4, 10, true);
  view.setFloat64(24, 1.5, true); // the update norm: zeroed once masked
  values.forEach((v, i) => view.setFloat32(32 + 4 * i, v, true));
  return out;
}

/** The advertise and share phases among `all`, relayed as the server would. */
async function keysAndShares(all) {
  for (const page of all) assert.equal(page.rounds.begin(invite(page.client, all.length)), true);
  for (let i = 0; i < 100 && !all.every((p) => p.sent.length); i++) await settle(); // WebCrypto key generation
  const adverts = all.map((p) => p.sent.find((m) => m.type === "secagg_advertise"));
  assert.equal(adverts.filter(Boolean).length, all.length);
  for (const page of all) {
    const keys = all.filter((o) => o !== page).map((o) => ({ client: o.client, cipher_public: adverts[o.client - 1].cipher_public, mask_public: adverts[o.client - 1].mask_public }));
    await page.rounds.handle({ v: 1, type: "secagg_keys", participation: 100 + page.client, round: 4, keys, deadline_ms: 1000 });
  }
  const shares = all.map((p) => p.sent.find((m) => m.type === "secagg_share_keys"));
  assert.equal(shares.filter(Boolean).length, all.length);
  return shares;
}

describe("SecureRounds", () => {
  it("advertises, shares keys, masks the trained body once the ciphertexts arrive, and unmasks", async () => {
    const all = pages(3);
    const shares = await keysAndShares(all);
    const [first] = all;
    // the masker waits for the ciphertexts addressed to it
    const masking = first.rounds.mask(101, body([0.5, -0.25, 0, 2, -2, 0.125]), 10_000);
    const ciphertexts = shares
      .filter((s) => s.participation !== 101)
      .map((s) => ({ client: s.participation - 100, ciphertext: s.ciphertexts.find((c) => c.client === 1).ciphertext }));
    await first.rounds.handle({ v: 1, type: "secagg_ciphertexts", participation: 101, round: 4, ciphertexts, deadline_ms: 1000 });
    const masked = await masking;
    assert.equal(masked.length, 32 + 4 * D);
    const view = new DataView(masked.buffer);
    assert.equal(view.getUint32(4, true), 10); // the header's sample count is kept
    assert.equal(view.getFloat64(24, true), 0); // its norm would describe this client's update
    assert.notDeepEqual([...masked.subarray(32)], [...body([0.5, -0.25, 0, 2, -2, 0.125]).subarray(32)]);
    assert.deepEqual(first.rounds.active, [101]); // its secrets are kept for the unmask phase
    // and the unmask request is answered with shares, after which the secrets are gone
    await first.rounds.handle({ v: 1, type: "secagg_unmask", participation: 101, round: 4, alive: [1, 2, 3], dropped: [], deadline_ms: 1000 });
    const reveal = first.sent.find((m) => m.type === "secagg_unmask_shares");
    assert.deepEqual(reveal.shares.map((s) => s.client), [2, 3]);
    assert.deepEqual(first.rounds.active, []);
    assert.deepEqual(first.problems, []);
  });

  it("ends secagg_dropped when the ciphertexts do not come before the deadline, and forgets the round", async () => {
    const [page] = pages(1);
    page.rounds.begin(invite(1));
    await settle();
    await assert.rejects(page.rounds.mask(101, body([1, 1, 1, 1, 1, 1]), 5), (err) => err instanceof RoundError && err.code === "secagg_dropped");
    assert.deepEqual(page.rounds.active, []);
  });

  it("forgets a round on an abort or a refused request, sends nothing, and ignores unknown rounds", async () => {
    const all = pages(3);
    await keysAndShares(all);
    const [first, second] = all;
    const before = [first.sent.length, second.sent.length];
    await first.rounds.handle({ v: 1, type: "secagg_abort", participation: 101, round: 4, reason: "below threshold" });
    assert.deepEqual(first.rounds.active, []);
    // an unmask request before the ciphertexts (out of phase) is refused
    await second.rounds.handle({ v: 1, type: "secagg_unmask", participation: 102, round: 4, alive: [1, 2, 3], dropped: [], deadline_ms: 1000 });
    assert.deepEqual(second.rounds.active, []);
    assert.match(second.problems[0], /secure round 102: refused secagg_unmask/);
    await second.rounds.handle({ v: 1, type: "secagg_unmask", participation: 555, round: 4, alive: [1], dropped: [], deadline_ms: 1000 });
    assert.deepEqual([first.sent.length, second.sent.length], before);
    await assert.rejects(second.rounds.mask(102, body([1, 1, 1, 1, 1, 1]), 1000), (err) => err.code === "secagg_dropped");
  });

  it("answers a request sent again after a reconnect with the first answer, and keeps the round", async () => {
    const all = pages(3);
    const shares = await keysAndShares(all);
    const [first] = all;
    const sentBefore = first.sent.length;
    // the server re-sends the key list (the share answer may have been lost with the socket)
    await first.rounds.handle({ v: 1, type: "secagg_keys", participation: 101, round: 4, keys: [], deadline_ms: 1000 });
    assert.equal(first.sent.length, sentBefore + 1);
    assert.deepEqual(first.sent.at(-1), shares[0]);
    assert.deepEqual(first.rounds.active, [101]);
    assert.deepEqual(first.problems, []);
  });

  it("refuses an invite whose secure block it cannot use, without sending anything", () => {
    const [page] = pages(1);
    const bad = invite(1);
    bad.secagg.session = "not base64url!";
    assert.equal(page.rounds.begin(bad), false);
    assert.deepEqual([page.sent, page.rounds.active], [[], []]);
    assert.equal(page.problems.length, 1);
  });
});
