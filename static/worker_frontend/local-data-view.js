// The worker page's "Your local data" section: for each running job that trains on (or, for
// analytics jobs, summarises) contributors' own data, pick a CSV or an image folder, see what was
// parsed, consent, keep it on this device; list what is kept, withdraw consent, erase. Parsing and
// the IndexedDB cache are local-data.js and local-columns.js; this module only draws and reacts.
// Nothing picked here is uploaded.
import { COLUMNS_FORMAT, describeColumns, parseColumnsCsv } from "./local-columns.js";
import { LIMITS, LocalDataError, describeSchema, localDataStore, parseCsv, parseImages } from "./local-data.js";

const fmt = new Intl.NumberFormat();
const CONSENT_TRAINING = "I agree that this job trains on this data here, on this device. Only the model update and its metrics are sent, never the data.";
const CONSENT_SUMMARY =
  "I agree that this job summarises these columns here, on this device. Only counts, sums, sums of squares and histogram counts over my rows are sent, never the rows.";

function el(doc, tag, props = {}, children = []) {
  const node = doc.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && !key.startsWith("aria")) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/** "cat: 3 · dog: 5" (images) or "0: 3 · 1: 5" (CSV labels). */
export function classSummary(schema, counts) {
  const names = schema.format === "images" ? schema.class_names : counts.map((_, i) => String(i));
  return counts.map((count, i) => `${names[i]}: ${fmt.format(count)}`).join(" · ");
}

function columnsSummary(doc, schema, parsed) {
  const missing = schema.columns.map((name, j) => `${name}: ${fmt.format(parsed.missing?.[j] ?? 0)}`).join(" · ");
  return el(doc, "dl", { className: "wf-local-summary", dataset: { testid: "local-data-summary" } }, [
    el(doc, "div", {}, [el(doc, "dt", { text: "Rows" }), el(doc, "dd", { text: fmt.format(parsed.n), dataset: { testid: "local-data-rows" } })]),
    el(doc, "div", {}, [el(doc, "dt", { text: "Columns" }), el(doc, "dd", { text: fmt.format(parsed.features) })]),
    el(doc, "div", { className: "wf-local-classes" }, [el(doc, "dt", { text: "Missing cells" }), el(doc, "dd", { text: missing, dataset: { testid: "local-data-missing" } })]),
  ]);
}

function summaryList(doc, schema, parsed) {
  if (schema.format === COLUMNS_FORMAT) return columnsSummary(doc, schema, parsed);
  return el(doc, "dl", { className: "wf-local-summary", dataset: { testid: "local-data-summary" } }, [
    el(doc, "div", {}, [el(doc, "dt", { text: schema.format === "images" ? "Images" : "Rows" }), el(doc, "dd", { text: fmt.format(parsed.n), dataset: { testid: "local-data-rows" } })]),
    el(doc, "div", {}, [el(doc, "dt", { text: "Features" }), el(doc, "dd", { text: fmt.format(parsed.features) })]),
    el(doc, "div", { className: "wf-local-classes" }, [
      el(doc, "dt", { text: "Samples per class" }),
      el(doc, "dd", { text: classSummary(schema, parsed.classCounts), dataset: { testid: "local-data-classes" } }),
    ]),
  ]);
}

async function readPicked(input, schema, onProgress, maxRows) {
  const files = Array.from(input.files || []);
  if (files.length === 0) throw new LocalDataError("no_data", "Nothing was picked.");
  if (schema.format === "images") return { parsed: await parseImages(files, schema, { onProgress }), source: { kind: "images", name: (files[0].webkitRelativePath || "").split("/")[0] || "folder", files: files.length } };
  const file = files[0];
  if (file.size > LIMITS.csvBytes) throw new LocalDataError("bad_data", `The file is larger than ${Math.round(LIMITS.csvBytes / 1048576)} MB.`);
  const text = await file.text();
  const parsed = schema.format === COLUMNS_FORMAT ? parseColumnsCsv(text, schema, { maxRows }) : parseCsv(text, schema);
  return { parsed, source: { kind: "csv", name: file.name, bytes: file.size } };
}

export class LocalDataView {
  /** @param {HTMLElement} section  @param {{jobsUrl: string, store?: object, fetch?: Function}} options */
  constructor(section, { jobsUrl, store = localDataStore(), fetch = globalThis.fetch.bind(globalThis) }) {
    this.section = section;
    this.doc = section.ownerDocument;
    this.jobsUrl = jobsUrl;
    this.store = store;
    this.fetch = fetch;
    const $ = (id) => this.doc.getElementById(id);
    this.el = { status: $("wf-local-status"), jobs: $("wf-local-jobs"), none: $("wf-local-none"), kept: $("wf-local-kept"), eraseAll: $("wf-local-erase-all") };
    this.jobs = [];
    this.el.eraseAll.addEventListener("click", () => this.eraseAll());
  }

  say(text) {
    this.el.status.textContent = text;
  }

  async start() {
    try {
      const response = await this.fetch(this.jobsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      this.jobs = (await response.json()).jobs || [];
    } catch (err) {
      this.say(`The list of jobs that use local data could not be loaded (${err.message}).`);
    }
    this.drawJobs();
    await this.drawKept();
    this.section.dataset.ready = "1";
  }

  drawJobs() {
    const { doc } = this;
    this.el.jobs.replaceChildren();
    if (this.jobs.length === 0) {
      this.el.jobs.append(el(doc, "p", { className: "muted", text: "No running job asks for local data right now." }));
      return;
    }
    for (const job of this.jobs) this.el.jobs.append(this.jobCard(job));
  }

  jobCard(job) {
    const { doc } = this;
    const id = `wf-local-file-${job.job}`;
    const consentId = `wf-local-consent-${job.job}`;
    const images = job.schema.format === "images";
    const columns = job.schema.format === COLUMNS_FORMAT; // an analytics job: summarised, not trained on
    const input = el(doc, "input", { type: "file", id, dataset: { testid: "local-data-file" }, "aria-describedby": `${id}-help` });
    if (images) {
      input.setAttribute("webkitdirectory", "");
      input.multiple = true;
    } else input.accept = ".csv,text/csv";
    const status = el(doc, "p", { className: "help", role: "status", "aria-live": "polite", dataset: { testid: "local-data-parse" } });
    const summary = el(doc, "div");
    const consent = el(doc, "input", { type: "checkbox", id: consentId, disabled: true, dataset: { testid: "local-data-consent" } });
    const save = el(doc, "button", { type: "button", className: "btn", disabled: true, text: "Keep on this device for this job", dataset: { testid: "local-data-save" } });
    let picked = null;
    const refresh = () => {
      save.disabled = !(picked && consent.checked);
    };
    input.addEventListener("change", async () => {
      picked = null;
      consent.checked = false;
      consent.disabled = true;
      summary.replaceChildren();
      refresh();
      status.textContent = "Reading on this device…";
      try {
        const progress = (done, total) => {
          status.textContent = `Decoding images on this device: ${fmt.format(done)} of ${fmt.format(total)}…`;
        };
        picked = await readPicked(input, job.schema, progress, job.max_samples);
        let capped = picked.parsed.n > job.max_samples ? ` Each round trains on the first ${fmt.format(job.max_samples)}.` : "";
        if (picked.parsed.capped) capped = ` Only its first ${fmt.format(job.max_samples)} rows are read: each round summarises at most that many.`;
        const skipped = picked.parsed.skipped ? ` ${fmt.format(picked.parsed.skipped)} other files were left out${picked.parsed.skippedFolders.length ? ` (folders ${picked.parsed.skippedFolders.join(", ")} are not classes of this job)` : ""}.` : "";
        status.textContent = `Read ${picked.source.name}: it matches what the job asks for.${capped}${skipped} Nothing has been kept or sent.`;
        summary.replaceChildren(summaryList(doc, job.schema, picked.parsed));
        consent.disabled = false;
      } catch (err) {
        status.textContent = err instanceof LocalDataError ? err.message : `The data could not be read: ${err.message}`;
      }
      refresh();
    });
    consent.addEventListener("change", refresh);
    save.addEventListener("click", async () => {
      if (!picked || !consent.checked) return;
      save.disabled = true;
      try {
        await this.store.save({ job: job.job, jobName: job.name, schema: job.schema, source: picked.source, parsed: picked.parsed, consent: true });
        status.textContent = `Kept on this device for “${job.name}”. It is used only when this job invites you to ${columns ? "contribute a summary" : "train"}.`;
        this.say("");
        input.value = "";
        picked = null;
        consent.checked = false;
        consent.disabled = true;
        summary.replaceChildren();
        await this.drawKept();
      } catch (err) {
        status.textContent = `Could not keep the data: ${err.message}`;
      }
      refresh();
    });
    return el(doc, "article", { className: "wf-local-job", dataset: { job: job.job, testid: "local-data-job" } }, [
      el(doc, "h3", { text: job.name }),
      el(doc, "p", { className: "muted", text: `by ${job.organisation}` }),
      el(doc, "p", {
        id: `${id}-help`,
        className: "help",
        text: columns ? `${describeColumns(job.schema)} At most ${fmt.format(job.max_samples)} rows are summarised per round.` : `${describeSchema(job.schema)} At most ${fmt.format(job.max_samples)} samples are used per round.`,
      }),
      el(doc, "div", { className: "wf-field" }, [el(doc, "label", { htmlFor: id, text: images ? "Pick a folder of images" : "Pick a CSV file" }), input]),
      status,
      summary,
      el(doc, "div", { className: "wf-field wf-check" }, [consent, el(doc, "label", { htmlFor: consentId, text: columns ? CONSENT_SUMMARY : CONSENT_TRAINING })]),
      save,
    ]);
  }

  async drawKept() {
    let kept = [];
    try {
      kept = await this.store.list();
    } catch (err) {
      this.say(`Kept data cannot be read in this browser (${err.message}).`);
    }
    this.el.kept.replaceChildren(...kept.map((record) => this.keptItem(record)));
    this.el.none.hidden = kept.length > 0;
    this.el.eraseAll.hidden = kept.length === 0;
    this.section.dataset.kept = String(kept.length);
  }

  keptItem(record) {
    const { doc } = this;
    const consentId = `wf-local-kept-consent-${record.job}`;
    const consent = el(doc, "input", { type: "checkbox", id: consentId, checked: record.consent === true, dataset: { testid: "local-data-kept-consent" } });
    consent.addEventListener("change", async () => {
      await this.store.setConsent(record.job, consent.checked);
      this.say(consent.checked ? `“${record.jobName}” may use this data again.` : `Consent withdrawn: “${record.jobName}” will not use this data.`);
      await this.drawKept();
    });
    const erase = el(doc, "button", { type: "button", className: "btn btn-small btn-danger", text: "Erase my local data", dataset: { testid: "local-data-erase" }, "aria-label": `Erase my local data for ${record.jobName}` });
    erase.addEventListener("click", async () => {
      await this.store.erase(record.job);
      this.say(`Erased the data kept for “${record.jobName}”.`);
      await this.drawKept();
    });
    const source = record.source?.kind === "images" ? `folder ${record.source.name} (${fmt.format(record.source.files)} files)` : `${record.source?.name} (${fmt.format(record.source?.bytes || 0)} bytes)`;
    return el(doc, "li", { className: "wf-local-kept-item", dataset: { job: record.job, testid: "local-data-kept-item" } }, [
      el(doc, "strong", { text: record.jobName || record.job }),
      el(doc, "p", { className: "muted", text: `From ${source}, kept ${record.consentedAt ? new Date(record.consentedAt).toLocaleString() : "without consent"}.` }),
      summaryList(doc, record.schema, record),
      el(doc, "div", { className: "wf-field wf-check" }, [consent, el(doc, "label", { htmlFor: consentId, text: record.schema?.format === COLUMNS_FORMAT ? "Use for this job's summaries (untick to withdraw consent)" : "Use for this job's training (untick to withdraw consent)" })]),
      erase,
    ]);
  }

  async eraseAll() {
    await this.store.eraseAll();
    this.say("Erased all local data kept on this device.");
    await this.drawKept();
  }
}

/** Mount the section if the page has it (the contribute page's template includes it). */
export function mountLocalData(doc = document) {
  const section = doc.getElementById("wf-local-data");
  const root = doc.getElementById("ccgsc-worker");
  if (!section || !root?.dataset.localDataJobsUrl) return null;
  const view = new LocalDataView(section, { jobsUrl: root.dataset.localDataJobsUrl });
  view.start();
  return view;
}
