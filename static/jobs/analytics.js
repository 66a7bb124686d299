// Histograms of a federated analytics job's latest round, drawn by uPlot as bars from the
// `histogram-data` JSON the page embeds (edges and counts per column). Each chart has a table of
// its bins under it, filled here, for screen readers and for when the library is missing.

const CHART_HEIGHT_PX = 200;

/** uPlot data for one column's histogram: x = each bin's middle, y = its count (pure). */
export function histogramData(column) {
  const middles = column.counts.map((_, i) => (column.edges[i] + column.edges[i + 1]) / 2);
  return [middles, column.counts.slice()];
}

/** The rows of a column's bin table: [from, to, count] as text (pure). */
export function binRows(column) {
  const format = (value) => Number(value.toPrecision(6)).toString();
  return column.counts.map((count, i) => [
    format(column.edges[i]),
    format(column.edges[i + 1]),
    format(count),
  ]);
}

function fillTable(body, column) {
  body.replaceChildren(...binRows(column).map((cells) => {
    const row = document.createElement('tr');
    for (const value of cells) {
      const cell = document.createElement('td');
      cell.textContent = value;
      row.append(cell);
    }
    return row;
  }));
}

async function main() {
  const columns = JSON.parse(document.getElementById('histogram-data').textContent);
  const charts = [];
  columns.forEach((column, index) => {
    fillTable(document.querySelector(`[data-bins="${index}"]`), column);
  });
  try {
    const { default: uPlot } = await import('../vendor/uplot/uPlot.esm.js');
    const bars = uPlot.paths.bars({ size: [0.9, Infinity] });
    columns.forEach((column, index) => {
      const target = document.querySelector(`[data-histogram="${index}"]`);
      const options = {
        width: Math.max(240, target.clientWidth),
        height: CHART_HEIGHT_PX,
        scales: { x: { time: false } },
        axes: [{ label: column.name }, { label: 'Count' }],
        series: [{ label: column.name }, { label: 'Count', fill: '#4dabf7', stroke: '#1971c2', paths: bars, points: { show: false } }],
      };
      charts.push(new uPlot(options, histogramData(column), target));
      target.dataset.points = String(column.counts.length);
    });
  } catch (error) {
    for (const details of document.querySelectorAll('#analytics-histograms details')) details.open = true;
    document.getElementById('analytics-histograms').dataset.chartError = String(error);
  }
  window.ccgscHistograms = { charts, columns };
}

if (typeof document !== 'undefined' && document.getElementById('histogram-data')) main();
