// Unit tests for the director's curves module (pure parts). Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { chartData, curveRows, curveSummary } from "../../static/jobs/curves.js";

const FL = {
  rounds_closed: 2,
  rounds_failed: 1,
  round_open: 4,
  round: [1, 3],
  train_loss: [2.0, 0.666667],
  train_accuracy: [0.51, 0.53],
  eval_loss: [null, 0.81],
  eval_accuracy: [null, 0.712346],
  client_accuracy_std: [0.0625, null],
  staleness_mean: [null, 1.5],
  duration_seconds: [12.5, 3],
  participants: [3, 4],
  dropouts: [1, 0],
  stragglers: [0, 1],
  rejected: [0, 2],
  bytes_up: [7896, 2_500_000],
  bytes_down: [10400, 999],
};

describe("director curves", () => {
  it("gives uPlot the rounds as x and one array per series", () => {
    assert.deepEqual(chartData(FL), {
      quality: [[1, 3], [2.0, 0.666667], [0.51, 0.53], [null, 0.712346]],
      cohort: [[1, 3], [3, 4], [1, 0], [0, 1], [0, 2]],
    });
  });

  it("fills the fallback table newest first, with a dash where nothing was measured", () => {
    assert.deepEqual(curveRows(FL), [
      ["3", "0.6667", "53.0 %", "0.8100", "71.2 %", "—", "4", "0", "1", "2", "1.50", "2.5 MB", "999 B", "3.0"],
      ["1", "2.0000", "51.0 %", "—", "—", "6.3 %", "3", "1", "0", "0", "—", "7.9 KB", "10.4 KB", "12.5"],
    ]);
  });

  it("summarises the latest round for the live region", () => {
    assert.equal(
      curveSummary(FL),
      "2 rounds closed · 1 failed · round 3: loss 0.6667 · accuracy 53.0 % · evaluation 71.2 % · 2 rejected · round 4 open",
    );
    const empty = { ...FL, rounds_closed: 0, rounds_failed: 0, round_open: null, round: [] };
    assert.equal(curveSummary(empty), "0 rounds closed");
  });
});
