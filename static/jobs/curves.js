// The director's federated learning curves: loss and accuracy per round, and the cohort
// (participants, dropouts, stragglers) per round, drawn by uPlot from the `fl` section of the
// director socket's `state` (column-wise series aligned with `round`). The table under the charts
// holds the same numbers for screen readers and for when the charting library is missing.
// uPlot is installed by the set-up into static/vendor (served by the site: no CDN under our CSP).

const CHART_HEIGHT_PX = 220;

const percent = (value) => (value == null ? '—' : `${(100 * value).toFixed(1)} %`);
const fixed = (digits) => (value) => (value == null ? '—' : Number(value).toFixed(digits));
const plain = (value) => (value == null ? '—' : String(value));

function bytes(value) {
  if (value == null) return '—';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let scaled = value;
  let unit = 0;
  while (scaled >= 1000 && unit < units.length - 1) {
    scaled /= 1000;
    unit += 1;
  }
  return `${scaled.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

// The table's columns: series name, heading, formatter.
const COLUMNS = [
  ['round', 'Round', plain],
  ['train_loss', 'Train loss', fixed(4)],
  ['train_accuracy', 'Train accuracy', percent],
  ['eval_loss', 'Evaluation loss', fixed(4)],
  ['eval_accuracy', 'Evaluation accuracy', percent],
  ['client_accuracy_std', 'Client accuracy spread (σ)', percent],
  ['participants', 'Participants', plain],
  ['dropouts', 'Dropouts', plain],
  ['stragglers', 'Stragglers', plain],
  ['rejected', 'Rejected', plain],
  ['staleness_mean', 'Mean staleness', fixed(2)],
  ['bytes_up', 'Up', bytes],
  ['bytes_down', 'Down', bytes],
  ['duration_seconds', 'Duration (s)', fixed(1)],
];

/** The rows of the fallback table, newest round first (pure, unit-tested). */
export function curveRows(fl) {
  const rows = fl.round.map((_, index) => COLUMNS.map(([name, , format]) => format(fl[name][index])));
  return rows.reverse();
}

/** A one-line summary of the curves for the live region (pure, unit-tested). */
export function curveSummary(fl) {
  const last = fl.round.length - 1;
  const parts = [`${fl.rounds_closed} rounds closed`];
  if (fl.rounds_failed) parts.push(`${fl.rounds_failed} failed`);
  if (last >= 0) {
    parts.push(`round ${fl.round[last]}: loss ${fixed(4)(fl.train_loss[last])}`);
    parts.push(`accuracy ${percent(fl.train_accuracy[last])}`);
    if (fl.eval_accuracy[last] != null) parts.push(`evaluation ${percent(fl.eval_accuracy[last])}`);
    if (fl.rejected[last]) parts.push(`${fl.rejected[last]} rejected`);
  }
  if (fl.round_open != null) parts.push(`round ${fl.round_open} open`);
  return parts.join(' · ');
}

/** The uPlot data arrays of both charts (pure, unit-tested): x = round number. */
export function chartData(fl) {
  return {
    quality: [fl.round, fl.train_loss, fl.train_accuracy, fl.eval_accuracy],
    cohort: [fl.round, fl.participants, fl.dropouts, fl.stragglers, fl.rejected],
  };
}

function qualityOptions(width) {
  return {
    width,
    height: CHART_HEIGHT_PX,
    scales: { x: { time: false }, accuracy: { range: [0, 1] } },
    axes: [
      { label: 'Round' },
      { label: 'Loss', scale: 'y' },
      { label: 'Accuracy', scale: 'accuracy', side: 1, grid: { show: false }, values: (_, ticks) => ticks.map((t) => `${Math.round(100 * t)}%`) },
    ],
    series: [
      { label: 'Round' },
      { label: 'Train loss', stroke: '#d9480f', width: 2, points: { show: true } },
      { label: 'Train accuracy', scale: 'accuracy', stroke: '#1971c2', width: 2, points: { show: true }, value: (_, v) => percent(v) },
      { label: 'Evaluation accuracy', scale: 'accuracy', stroke: '#2f9e44', width: 2, dash: [6, 4], points: { show: true }, value: (_, v) => percent(v) },
    ],
  };
}

function cohortOptions(width) {
  return {
    width,
    height: CHART_HEIGHT_PX,
    scales: { x: { time: false } },
    axes: [{ label: 'Round' }, { label: 'Clients' }],
    series: [
      { label: 'Round' },
      { label: 'Participants', stroke: '#1971c2', width: 2, points: { show: true } },
      { label: 'Dropouts', stroke: '#e03131', width: 2, points: { show: true } },
      { label: 'Stragglers', stroke: '#f08c00', width: 2, points: { show: true } },
      { label: 'Rejected', stroke: '#862e9c', width: 2, dash: [2, 3], points: { show: true } },
    ],
  };
}

/** Wire the curves section: returns update(fl), to call with each state's `fl` section. */
export async function createCurves(section) {
  const $ = (id) => section.querySelector(`#${id}`);
  const quality = $('chart-quality');
  const cohort = $('chart-cohort');
  const rowsBody = $('curve-rows');
  const summary = $('curve-summary');
  const charts = {};
  let latest = null;
  try {
    const { default: uPlot } = await import('../vendor/uplot/uPlot.esm.js');
    const width = (el) => Math.max(240, el.clientWidth);
    charts.quality = new uPlot(qualityOptions(width(quality)), [[], [], [], []], quality);
    charts.cohort = new uPlot(cohortOptions(width(cohort)), [[], [], [], [], []], cohort);
    // Responsive: the charts follow their containers (a phone gets one chart per row).
    const observer = new ResizeObserver(() => {
      for (const [name, el] of [['quality', quality], ['cohort', cohort]]) {
        charts[name].setSize({ width: width(el), height: CHART_HEIGHT_PX });
      }
    });
    observer.observe(quality);
    observer.observe(cohort);
  } catch (error) {
    // Without the library (set-up not run) the table carries the numbers alone.
    section.querySelector('.curve-charts').hidden = true;
    $('curve-details').open = true;
    summary.dataset.chartError = String(error);
  }
  // For tests and the curious: the charts and the data they show.
  window.ccgscCurves = { charts, latest: () => latest };

  return function update(fl) {
    latest = fl;
    const data = chartData(fl);
    for (const name of Object.keys(charts)) charts[name].setData(data[name]);
    for (const el of [quality, cohort]) el.dataset.points = String(fl.round.length);
    summary.textContent = curveSummary(fl);
    rowsBody.replaceChildren(...curveRows(fl).map((cells) => {
      const row = document.createElement('tr');
      for (const value of cells) {
        const cell = document.createElement('td');
        cell.textContent = value;
        row.append(cell);
      }
      return row;
    }));
  };
}
