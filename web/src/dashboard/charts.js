/**
 * The dashboard's three uPlot charts: test accuracy and loss, bytes up and down, and
 * participation (accepted, declined, rejected, missing; stacked) per round.
 *
 * uPlot (leeoniya/uPlot) draws each from columns of numbers; the x column is the
 * round. Stacking: each bar series holds its running total and is drawn over the
 * taller ones before it. Legends name the series (no hover values: it is a wall screen).
 */

import uPlot from 'uplot';

const COLOURS = { acc: '#2266cc', loss: '#b5651d', up: '#1e8a4c', down: '#7a4fbf',
  accepted: '#1e8a4c', declined: '#d9a441', rejected: '#c0392b', missing: '#aab4be' };

function human(bytes) {
  if (bytes === null || bytes === undefined) return '–';
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} kB`;
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

const roundAxis = { label: 'round', size: 36, incrs: [1, 2, 5, 10, 20, 50, 100], values: (u, v) => v.map((x) => x.toFixed(0)) };

/** The plot's size: its box, less the legend under it. */
function size(el, plot = null) {
  const legend = plot?.root.querySelector('.u-legend')?.offsetHeight ?? 28;
  return { width: Math.max(200, el.clientWidth), height: Math.max(100, el.clientHeight - legend - 6) };
}

const legend = { live: false };
/** bars need half a round of room at either end */
const barRange = (u, min, max) => [(min ?? 1) - 0.5, (max ?? 1) + 0.5];

export class Charts {
  constructor({ quality, bytes, participation }) {
    this.els = { quality, bytes, participation };
    this.raw = [];
    const bars = uPlot.paths.bars({ size: [0.7, 40] });
    this.quality = new uPlot({
      ...size(quality),
      legend,
      scales: { x: { time: false }, acc: { range: [0, 1] }, loss: { range: (u, min, max) => [0, Math.max(max ?? 1, 0.1)] } },
      axes: [roundAxis, { scale: 'acc', label: 'accuracy', size: 48 }, { scale: 'loss', side: 1, label: 'loss', size: 48, grid: { show: false } }],
      series: [{ label: 'round' },
        { label: 'accuracy', scale: 'acc', stroke: COLOURS.acc, width: 2, points: { size: 6 } },
        { label: 'loss', scale: 'loss', stroke: COLOURS.loss, width: 2, points: { size: 6 } }],
    }, [[], [], []], quality);
    this.bytes = new uPlot({
      ...size(bytes),
      legend,
      scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(max ?? 1, 1)] } },
      axes: [roundAxis, { size: 72, values: (u, v) => v.map(human) }],
      series: [{ label: 'round' },
        { label: 'up', stroke: COLOURS.up, width: 2, points: { size: 6 } },
        { label: 'down', stroke: COLOURS.down, width: 2, points: { size: 6 } }],
    }, [[], [], []], bytes);
    const kinds = ['missing', 'rejected', 'declined', 'accepted']; // drawn tallest first
    this.participation = new uPlot({
      ...size(participation),
      legend,
      scales: { x: { time: false, range: barRange }, y: { range: (u, min, max) => [0, Math.max(max ?? 1, 1)] } },
      axes: [roundAxis, { size: 40 }],
      series: [{ label: 'round' }, ...kinds.map((k, i) => ({
        label: k, fill: COLOURS[k], stroke: COLOURS[k], paths: bars, points: { show: false },
      }))],
    }, [[], [], [], [], []], participation);
    // the boxes get their size from the page's grid, after layout and on every resize
    new ResizeObserver(() => this.resize()).observe(quality.parentElement.parentElement);
  }

  resize() {
    for (const name of ['quality', 'bytes', 'participation']) this[name].setSize(size(this.els[name], this[name]));
  }

  /** `history`: DashboardState.history() rows. */
  update(history) {
    const x = history.map((m) => m.round);
    const col = (key) => history.map((m) => (m.missed ? null : m[key])); // a gap where not seen
    this.quality.setData([x, col('accuracy'), col('loss')]);
    this.bytes.setData([x, col('bytes_up'), col('bytes_down')]);
    this.raw = history.map((m) => (m.missed ? null
      : { accepted: m.accepted, declined: m.declined, rejected: m.rejectedTotal, missing: m.missing }));
    const stack = (...keys) => this.raw.map((r) => (r === null ? null : keys.reduce((s, k) => s + (r[k] ?? 0), 0)));
    this.participation.setData([x,
      stack('accepted', 'declined', 'rejected', 'missing'), stack('accepted', 'declined', 'rejected'),
      stack('accepted', 'declined'), stack('accepted')]);
  }
}

export { human };
