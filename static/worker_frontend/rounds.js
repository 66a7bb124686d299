// FL rounds on the worker page: runs training.js for each `train` effect the session emits (or
// analytics-round.js when the invite carries an analytics query), with the page's origin, worker
// token and device, the kernel calls in a module Web Worker of its own (kernel-worker.js named
// `ccgsc-training`, started on the first round, so the cores lent to FC tasks keep their tasks),
// the progress for the view and the outcome for the session. No DOM.
//
// A secure round (the invite has `secagg`) also runs its SecAgg+ client (secure-rounds.js): the
// page sends its phase answers with `send`, gives it the session's `{do: "secagg"}` messages
// through `secagg(message)`, and the trained update is masked before it is uploaded.
//
//   onProgress(info)                        a round's stage, epoch or upload bytes changed
//   onFinished(info, code, message)         a round ended (give it to session.roundFinished)
//   send(message)                           send a JSON control message (secure rounds' phases)
//   onProblem(text)                         a secure round refused a request (for the log)
import { runAnalyticsRound } from "./analytics-round.js";
import { SecureRounds } from "./secure-rounds.js";
import { Http, RoundError, runRound } from "./training.js";

export class RoundRunner {
  constructor({ workerUrl, origin, onProgress = () => {}, onFinished = () => {}, send = () => {}, onProblem = () => {}, createWorker = null, fetch = null }) {
    this.workerUrl = workerUrl;
    this.origin = origin;
    this.fetch = fetch; // tests give their own; the page uses the browser's
    this.callbacks = { onProgress, onFinished };
    this.createWorker = createWorker || ((name) => new Worker(this.workerUrl, { type: "module", name }));
    this.rounds = new Map(); // participation -> {info, controller}
    this.trainer = null; // {worker, pending: Map(id -> {resolve, reject}), sequence}
    this.secure = new SecureRounds({ send, onProblem });
  }

  /** What the rounds being trained look like: {job, round, participation, stage, epoch, epochs, sentBytes, totalBytes}. */
  get active() {
    return [...this.rounds.values()].map((r) => ({ ...r.info }));
  }

  /** Train one round (fetch, E epochs, chunked upload); `onFinished` reports its end. */
  start(invite, { token, capabilities = {} }) {
    const info = {
      job: invite.job,
      round: invite.round,
      participation: invite.participation,
      stage: "starting",
      epoch: 0,
      epochs: invite.hyperparameters?.epochs ?? 0, // an analytics invite has none
      analytics: Boolean(invite.analytics),
      sentBytes: 0,
      totalBytes: invite.upload.total_bytes,
    };
    const controller = new AbortController();
    this.rounds.set(invite.participation, { info, controller });
    const deadline = performance.now() + invite.deadline_ms;
    const secure = Boolean(invite.secagg) && this.secure.begin(invite);
    const run = invite.analytics ? runAnalyticsRound : runRound;
    run(invite, {
      http: new Http({ origin: this.origin, token, ...(this.fetch ? { fetch: this.fetch } : {}) }),
      openKernel: (bytes, kernel) => this.openKernel(bytes, kernel),
      openAnalytics: (bytes, kernel) => this.openAnalytics(bytes, kernel),
      deadline,
      clock: () => performance.now(),
      capabilities: { simd: capabilities.simd, memoryMb: capabilities.memory_mb },
      signal: controller.signal,
      onProgress: (progress) => {
        Object.assign(info, progress);
        this.callbacks.onProgress({ ...info });
      },
      prepareUpload: invite.secagg ? (body) => this.masked(invite.participation, body, secure, deadline) : undefined,
    }).then(({ code, message }) => {
      this.rounds.delete(invite.participation);
      if (code !== "uploaded") this.secure.end(invite.participation); // its secrets are no use now
      this.callbacks.onFinished({ ...info, stage: "done" }, code, message);
    });
  }

  /** A secure round's phase message (the session's `{do: "secagg"}`); resolves once answered. */
  secagg(message) {
    return this.secure.handle(message);
  }

  /** Abandon every round: cancel them (they end `cancelled`) and stop the training worker. */
  stop() {
    for (const { controller } of this.rounds.values()) controller.abort();
    this.secure.clear();
    this.dropTrainer("the page stopped training");
  }

  // -- internals -------------------------------------------------------------------------

  /** A secure round's trained body, masked once the neighbours' ciphertexts are in. */
  async masked(participation, body, begun, deadline) {
    const entry = this.rounds.get(participation);
    if (entry) {
      Object.assign(entry.info, { stage: "masking" });
      this.callbacks.onProgress({ ...entry.info });
    }
    if (!begun) throw new RoundError("secagg_dropped", "this worker could not join the secure round");
    return this.secure.mask(participation, body, deadline - performance.now());
  }

  /** `runEpoch(call)` for a module training.js fetched and checked (checked again there). */
  async openKernel(bytes, kernel) {
    const module = bytes.slice().buffer;
    return (call) =>
      new Promise((resolve, reject) => {
        const trainer = this.trainingWorker();
        const id = ++trainer.sequence;
        trainer.pending.set(id, { resolve, reject });
        const ref = { name: kernel.name, sha256: kernel.sha256, url: kernel.url, bytes: module };
        trainer.worker.postMessage({ type: "train", id, kernel: ref, call });
      });
  }

  /** `summarize(input)` → the ABI v3 kernel's output bytes, run in the training worker. */
  async openAnalytics(bytes, kernel) {
    const module = bytes.slice().buffer;
    return (input) =>
      new Promise((resolve, reject) => {
        const trainer = this.trainingWorker();
        const id = ++trainer.sequence;
        trainer.pending.set(id, { resolve: (output) => resolve(new Uint8Array(output)), reject });
        const ref = { name: kernel.name, sha256: kernel.sha256, url: kernel.url, bytes: module };
        const copy = input.slice().buffer;
        trainer.worker.postMessage({ type: "run", id, kernel: ref, input: copy }, [copy]);
      });
  }

  trainingWorker() {
    if (this.trainer) return this.trainer;
    const worker = this.createWorker("ccgsc-training");
    const trainer = { worker, pending: new Map(), sequence: 0 };
    worker.onmessage = ({ data }) => {
      const waiting = trainer.pending.get(data?.id);
      if (!waiting || data.type === "stage") return;
      trainer.pending.delete(data.id);
      if (data.type === "trained") waiting.resolve(data.result);
      else if (data.type === "done") waiting.resolve(data.output); // an analytics summary
      else waiting.reject(new Error(data.message || data.code || "training failed"));
    };
    worker.onerror = (event) => {
      event.preventDefault?.();
      if (this.trainer === trainer) this.dropTrainer(`the training worker crashed: ${event.message || "unknown error"}`);
    };
    this.trainer = trainer;
    return trainer;
  }

  /** Terminate the training worker; the epochs it had fail with `reason` (kernel_failed). */
  dropTrainer(reason) {
    const trainer = this.trainer;
    this.trainer = null;
    if (!trainer) return;
    trainer.worker.terminate();
    for (const { reject } of trainer.pending.values()) reject(new Error(reason));
    trainer.pending.clear();
  }
}
