// The contribute page's DOM: status, buttons, options, counters, per-core activity, the FL round
// being trained, problems.
// It reads a model (a plain object the page builds) and reports clicks; it holds no logic.

const MAX_ERRORS_SHOWN = 8;

const STATE_LABELS = {
  offline: "Not connected",
  connecting: "Connecting…",
  connected: "Connected — working",
  paused: "Connected — paused",
  reconnecting: "Connection lost — reconnecting",
  stopped: "Stopped",
};

const STAGE_LABELS = { starting: "starting", fetching: "downloading kernel", compiling: "preparing kernel", running: "running" };

const ROUND_STAGES = { starting: "starting", fetching: "downloading the model and data", training: "training", summarising: "summarising the local data (analytics)", masking: "waiting for the secure round's keys, masking", uploading: "uploading the update" };
const ROUND_OUTCOMES = {
  uploaded: "update sent; it counts when the round closes",
  late: "the round closed before the update arrived",
  rejected: "the server refused the update",
  cancelled: "stopped",
  paused: "declined: paused",
  no_simd: "declined: this browser lacks WebAssembly SIMD",
  low_memory: "declined: not enough memory for this model",
  secagg_dropped: "left out of the secure round's key exchange",
  no_local_data: "declined: no local data for this job",
  unsupported: "declined: this device cannot train",
};

const numberFormat = new Intl.NumberFormat();
const fmt = (n) => numberFormat.format(n);

export class View {
  /** @param {HTMLElement} root  @param {() => object} model */
  constructor(root, model) {
    this.root = root;
    this.model = model;
    this.queued = false;
    const $ = (id) => root.ownerDocument.getElementById(id);
    this.el = {
      connection: $("wf-connection"),
      countdown: $("wf-countdown"),
      detail: $("wf-status-detail"),
      join: $("wf-join"),
      leave: $("wf-leave"),
      pause: $("wf-pause"),
      resume: $("wf-resume"),
      cores: $("wf-cores"),
      coreCount: $("wf-core-count"),
      charging: $("wf-charging"),
      chargingField: $("wf-charging-field"),
      chargingNote: $("wf-charging-note"),
      metered: $("wf-metered"),
      meteredField: $("wf-metered-field"),
      meteredNote: $("wf-metered-note"),
      tasksCompleted: $("wf-tasks-completed"),
      resultsAcked: $("wf-results-acked"),
      creditsValidated: $("wf-credits-validated"),
      creditsWorkUnits: $("wf-credits-work-units"),
      outbox: $("wf-outbox"),
      errorsCount: $("wf-errors-count"),
      slots: $("wf-slots"),
      idle: $("wf-idle"),
      errorsCard: $("wf-errors-card"),
      errors: $("wf-errors"),
      fatal: $("wf-fatal"),
      fatalText: $("wf-fatal-text"),
      unsupported: $("wf-unsupported"),
      roundIdle: $("wf-round-idle"),
      round: $("wf-round"),
      roundName: $("wf-round-name"),
      roundStage: $("wf-round-stage"),
      roundEpochs: $("wf-round-epochs"),
      roundEpochsText: $("wf-round-epochs-text"),
      roundUpload: $("wf-round-upload"),
      roundUploadText: $("wf-round-upload-text"),
      roundOutcome: $("wf-round-outcome"),
    };
  }

  /** Wire the controls: {join, leave, pause, resume, cores(n), charging(bool), metered(bool)}. */
  bind(handlers) {
    const { el } = this;
    const focusAfter = (button) =>
      requestAnimationFrame(() => {
        if (!button.hidden) button.focus();
      });
    el.join.addEventListener("click", () => {
      handlers.join();
      focusAfter(el.leave);
    });
    el.leave.addEventListener("click", () => {
      handlers.leave();
      focusAfter(el.join);
    });
    el.pause.addEventListener("click", () => {
      handlers.pause();
      focusAfter(el.resume);
    });
    el.resume.addEventListener("click", () => {
      handlers.resume();
      focusAfter(el.pause);
    });
    el.cores.addEventListener("change", () => handlers.cores(Number(el.cores.value)));
    el.charging.addEventListener("change", () => handlers.charging(el.charging.checked));
    el.metered.addEventListener("change", () => handlers.metered(el.metered.checked));
  }

  /** Fill the cores menu and the options' initial values. */
  setOptions({ hardwareCores, cores, onlyCharging, pauseMetered }) {
    const { el } = this;
    el.coreCount.textContent = String(hardwareCores);
    for (let n = 1; n <= hardwareCores; n++) {
      const option = el.cores.ownerDocument.createElement("option");
      option.value = String(n);
      option.textContent = n === hardwareCores ? `${n} (all)` : String(n);
      el.cores.append(option);
    }
    el.cores.value = String(cores);
    el.charging.checked = onlyCharging;
    el.metered.checked = pauseMetered;
  }

  /** Show only the options this browser can honour. */
  setDeviceSupport({ battery, connection }) {
    const { el } = this;
    el.chargingField.hidden = !battery;
    el.chargingNote.hidden = battery;
    el.meteredField.hidden = !connection;
    el.meteredNote.hidden = connection;
  }

  setUnsupported(reason) {
    this.el.unsupported.textContent = reason;
    this.el.unsupported.hidden = !reason;
    this.render();
  }

  /** Add a line to the problems list (newest first, a few kept). */
  recordError(text) {
    const { el } = this;
    const doc = el.errors.ownerDocument;
    const li = doc.createElement("li");
    const time = doc.createElement("time");
    const now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = now.toLocaleTimeString();
    time.className = "muted";
    li.append(time, " ", text);
    el.errors.prepend(li);
    while (el.errors.children.length > MAX_ERRORS_SHOWN) el.errors.lastElementChild.remove();
    el.errorsCard.hidden = false;
    this.render();
  }

  /** Render at the next animation frame (at most once per frame). */
  render() {
    if (this.queued) return;
    this.queued = true;
    requestAnimationFrame(() => {
      this.queued = false;
      this.renderNow();
    });
  }

  renderNow() {
    const m = this.model();
    const { el } = this;
    const label = m.connection === "offline" && m.joined ? "Offline — waiting for the network" : STATE_LABELS[m.connection];
    if (el.connection.textContent !== label) el.connection.textContent = label;
    el.connection.dataset.state = m.connection;
    this.root.dataset.connection = m.connection;
    const waitS = Math.max(0, Math.ceil((m.reconnectAt - Date.now()) / 1000));
    el.countdown.textContent = m.connection === "reconnecting" ? `in ${waitS} s` : "";

    const reasons = m.pauseReasons;
    let detail = "";
    if (m.connection === "paused" || (m.joined && reasons.length && m.connection !== "stopped")) {
      const why = [];
      if (reasons.includes("user")) why.push("you paused");
      if (reasons.includes("battery")) why.push("the device is not charging");
      if (reasons.includes("metered")) why.push("the connection is metered");
      const running = m.slots.filter((s) => s.busy).length;
      detail = `Paused because ${why.join(" and ")}.` + (running ? ` Finishing ${running} running task${running > 1 ? "s" : ""}, then idle.` : "");
    } else if (m.connection === "connected") {
      detail = `Lending ${m.cores} of ${m.hardwareCores} core${m.hardwareCores > 1 ? "s" : ""}. Waiting for tasks when idle is normal.`;
    } else if (!m.joined && m.connection === "offline") {
      detail = m.outbox ? `${m.outbox} finished result${m.outbox > 1 ? "s" : ""} will be sent when you join again.` : "";
    }
    if (el.detail.textContent !== detail) el.detail.textContent = detail;

    el.join.hidden = m.joined;
    el.join.disabled = m.connection === "stopped" || !!el.unsupported.textContent;
    el.leave.hidden = !m.joined;
    el.pause.hidden = !m.joined || m.userPaused;
    el.resume.hidden = !m.joined || !m.userPaused;

    el.tasksCompleted.textContent = fmt(m.tasksCompleted);
    el.resultsAcked.textContent = fmt(m.resultsAcked);
    el.creditsValidated.textContent = fmt(m.creditsValidated);
    el.creditsWorkUnits.textContent = fmt(m.creditsWorkUnits);
    el.outbox.textContent = fmt(m.outbox);
    el.errorsCount.textContent = fmt(m.errors);

    this.renderSlots(m);
    this.renderRound(m);
    el.fatal.hidden = !m.fatal;
    if (m.fatal) el.fatalText.textContent = m.fatal;
  }

  renderSlots(m) {
    const { el } = this;
    const items = el.slots.children;
    const doc = el.slots.ownerDocument;
    while (items.length > m.slots.length) el.slots.lastElementChild.remove();
    while (items.length < m.slots.length) {
      const li = doc.createElement("li");
      li.className = "wf-slot";
      const head = doc.createElement("div");
      head.className = "wf-slot-head";
      const title = doc.createElement("span");
      title.className = "wf-slot-title";
      const meta = doc.createElement("span");
      meta.className = "wf-slot-meta muted";
      head.append(title, meta);
      const bar = doc.createElement("progress");
      bar.className = "wf-bar";
      bar.max = 1;
      li.append(head, bar);
      el.slots.append(li);
    }
    let anyBusy = false;
    m.slots.forEach((slot, i) => {
      const li = items[i];
      const [title, meta] = li.firstElementChild.children;
      const bar = li.lastElementChild;
      const busy = slot.busy;
      li.dataset.busy = busy ? "true" : "false";
      if (!busy) {
        title.textContent = `Core ${i + 1}: idle`;
        meta.textContent = slot.retiring ? "stopping" : "";
        bar.hidden = true;
        return;
      }
      anyBusy = true;
      const t = busy.task;
      const elapsed = (performance.now() - busy.startedAt) / 1000;
      title.textContent = `Core ${i + 1}: ${t.kernel.name}` + (t.task !== null ? ` · task ${t.task}` : "");
      const stage = STAGE_LABELS[busy.stage] || busy.stage;
      meta.textContent = `${stage} · ${elapsed < 10 ? elapsed.toFixed(1) : Math.round(elapsed)} s`;
      bar.hidden = false;
      const estimate = m.estimate(busy);
      if (estimate === null) {
        bar.removeAttribute("value");
        bar.setAttribute("aria-label", `Core ${i + 1} progress: ${stage}`);
      } else {
        bar.value = estimate;
        bar.setAttribute("aria-label", `Core ${i + 1} progress: about ${Math.round(estimate * 100)}%`);
      }
    });
    el.idle.hidden = anyBusy;
    el.idle.textContent = m.joined ? (m.slots.length ? "Waiting for tasks." : "Starting…") : "Nothing is running.";
  }

  /** The round being trained (the first, if several), and how the last one ended. */
  renderRound(m) {
    const { el } = this;
    const r = m.rounds[0];
    el.round.hidden = !r;
    el.roundIdle.hidden = !!r || !!m.lastRound;
    if (r) {
      el.roundName.textContent = `Job ${r.job.slice(0, 8)} · round ${r.round}`;
      el.roundStage.textContent = ROUND_STAGES[r.stage] || r.stage;
      const epochsDone = r.stage === "uploading" ? r.epochs : Math.min(r.epoch, r.epochs);
      el.roundEpochs.value = r.epochs ? epochsDone / r.epochs : Number(r.stage === "uploading");
      el.roundEpochsText.textContent = r.analytics ? "none: an analytics round summarises, it does not train" : `${epochsDone} of ${r.epochs}`;
      el.roundEpochs.setAttribute("aria-valuetext", r.analytics ? "no epochs" : `${epochsDone} of ${r.epochs} epochs`);
      const sent = r.sentBytes || 0;
      el.roundUpload.value = r.totalBytes ? Math.min(1, sent / r.totalBytes) : 0;
      el.roundUploadText.textContent = `${fmt(Math.round(sent / 1024))} of ${fmt(Math.round(r.totalBytes / 1024))} KiB`;
      el.roundUpload.setAttribute("aria-valuetext", el.roundUploadText.textContent);
    }
    const last = m.lastRound;
    const text = last
      ? `Last round: job ${last.job.slice(0, 8)}, round ${last.round}: ${ROUND_OUTCOMES[last.outcome] || `ended (${last.outcome})`}` +
        (last.message && last.outcome !== "uploaded" ? ` (${last.message})` : "") +
        "."
      : "";
    if (el.roundOutcome.textContent !== text) el.roundOutcome.textContent = text;
    el.roundOutcome.dataset.outcome = last ? last.outcome : "";
  }
}
