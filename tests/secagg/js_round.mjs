// Hosts browser secure-round clients (static/worker_frontend/secagg-round.js) for a Python test:
// one JSON request per stdin line, one JSON answer per stdout line.
import { createInterface } from "node:readline";

import {
  b64decode,
  b64encode,
  SecureRoundClient,
} from "../../static/worker_frontend/secagg-round.js";

const clients = new Map();
const handlers = {
  async create({ id, invite }) {
    const client = new SecureRoundClient(invite);
    clients.set(id, client);
    return { message: await client.advertise() };
  },
  async handle({ id, message }) {
    return { message: await clients.get(id).handle(message) };
  },
  async mask({ id, update }) {
    const raw = b64decode(update);
    const values = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
    const bytes = await clients.get(id).maskUpdate(values);
    return { masked: b64encode(bytes) };
  },
};

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
