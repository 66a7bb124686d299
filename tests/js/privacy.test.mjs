// Unit tests for the director's privacy card (pure part). Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { privacyTexts } from "../../static/jobs/privacy.js";

const PRIVACY = {
  epsilon_spent: 4.73365,
  epsilon_budget: 6,
  delta: 1e-5,
  rounds_spending: 1,
  rounds_allowed: 1,
  rounds_planned: 3,
  rounds_left: 0,
  clip_norm: 0.5,
};

describe("director privacy card", () => {
  it("says ε spent, the budget and the rounds left as the page first rendered them", () => {
    assert.deepEqual(privacyTexts(PRIVACY), {
      spent: "4.734 of 6 after 1 round",
      left: "0 more rounds fit the budget (it allows 1 of the 3 planned: the job stops there)",
      summary:
        "Privacy budget: ε = 4.734 of 6 spent (δ = 0.00001); no more rounds fit the budget. " +
        "Clip norm C = 0.5.",
    });
  });

  it("counts rounds in the singular and plural, and leaves out an unknown clip norm", () => {
    const texts = privacyTexts({
      ...PRIVACY,
      epsilon_spent: 0,
      rounds_spending: 2,
      rounds_allowed: 3,
      rounds_left: 1,
      clip_norm: null,
    });
    assert.equal(texts.spent, "0.000 of 6 after 2 rounds");
    // The same words as the server's template (so a live update changes only the numbers).
    assert.equal(texts.left, "1 more round fit the budget (it allows 3, all 3 planned)");
    assert.equal(
      texts.summary,
      "Privacy budget: ε = 0.000 of 6 spent (δ = 0.00001); 1 more round fit the budget.",
    );
  });
});
