// Drives static/worker_frontend/secagg*.js from Python tests under Node: one JSON request per
// stdin line, one JSON answer per stdout line (the requests are in js_handlers.mjs).
import { createInterface } from "node:readline";

import { handlers } from "./js_handlers.mjs";

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const request = JSON.parse(line);
  let answer;
  try {
    answer = { ok: true, ...(await handlers[request.op](request)) };
  } catch (error) {
    answer = { ok: false, error: `${error.name}: ${error.message}` };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
