// Unit tests for the analytics results page's histogram module (pure parts).
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { binRows, histogramData } from "../../static/jobs/analytics.js";

const COLUMN = { name: "px20", edges: [0, 0.25, 0.5, 0.75, 1], counts: [3, 0, 1.5, 7] };

describe("analytics histograms", () => {
  it("puts each bar at its bin's middle with its count", () => {
    assert.deepEqual(histogramData(COLUMN), [[0.125, 0.375, 0.625, 0.875], [3, 0, 1.5, 7]]);
  });
  it("lists every bin as from, to and count", () => {
    assert.deepEqual(binRows(COLUMN), [
      ["0", "0.25", "3"],
      ["0.25", "0.5", "0"],
      ["0.5", "0.75", "1.5"],
      ["0.75", "1", "7"],
    ]);
  });
});
