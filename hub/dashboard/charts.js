// The fleet's charts (from the live snapshots, kept client-side) and a device's metrics
// chart, drawn with uPlot (vendor/, a global).
//
// The time axis spans at least MIN_SPAN_S, ending at the newest point, and its ticks are
// times of day: left to itself, uPlot spreads one point (or a few seconds) over years
// and labels the first seconds "2027 2028 2029".

import { $, el } from "./util.js";

const HISTORY_S = 15 * 60; // what the fleet charts keep
const MIN_SPAN_S = 60;
const SMOOTH = 5; // snapshots a rate is averaged over: work arrives in bursts
const COLORS = ["#5b8def", "#9aa5b1", "#e8710a", "#1e8e3e", "#a142f4", "#d93025"];
// Counts of devices step by whole numbers.
const WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

const series = { t: [], online: [], total: [], rate: [], latency: [] };
const perModel = new Map(); // model -> values aligned with series.t
const made = {};
const lastTicks = []; // the last SMOOTH snapshots' windows and counts
let models = [];

export const fleetCharts = { lastRate: null };

function size(box) {
  const width = Math.max(200, (box.clientWidth || box.parentElement.clientWidth) - 4);
  return { width, height: 150 };
}

function timeRange(u, min, max) {
  if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max)) {
    const now = Date.now() / 1000;
    return [now - MIN_SPAN_S, now];
  }
  return [Math.min(min, max - MIN_SPAN_S), max];
}

// Tick labels as times of day (with the date over a day's span); the labels drawn last
// are kept on the chart's element (data-x-ticks), since the canvas holds no text.
function timeTicks(u, splits) {
  const span = u.scales.x.max - u.scales.x.min;
  const format = span > 20 * 3600
    ? { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }
    : span > 10 * 60 ? { hour: "2-digit", minute: "2-digit" }
      : { hour: "2-digit", minute: "2-digit", second: "2-digit" };
  const labels = splits.map((ts) => (ts === null ? "" : new Date(ts * 1000).toLocaleString([], format)));
  u.root.setAttribute("data-x-ticks", labels.join(" | "));
  return labels;
}

// Counts and rates start at zero.
const fromZero = (u, min, max) => [0, max > 0 ? max * 1.15 : 1];

function make(id, lines, data, counts = false) {
  const box = $(id);
  if (made[id]) made[id].destroy();
  made[id] = new uPlot({
    ...size(box),
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true, range: timeRange }, y: { range: fromZero } },
    axes: [
      { size: 30, values: timeTicks, space: 70 },
      counts ? { size: 44, incrs: WHOLE } : { size: 44 },
    ],
    series: [{}, ...lines.map((label, i) => ({
      label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
    }))],
  }, data, box);
}

function modelData() {
  return models.length
    ? [series.t, ...models.map((m) => perModel.get(m))]
    : [series.t, series.t.map(() => null)];
}

export function ensureCharts() {
  if (typeof uPlot === "undefined" || made["c-online"]) return;
  make("c-online", ["online", "enrolled"], [series.t, series.online, series.total], true);
  make("c-rate", ["ended / s"], [series.t, series.rate]);
  make("c-latency", ["mean ms"], [series.t, series.latency]);
  make("c-models", models.length ? models : ["(no results yet)"], modelData());
}

export function addSnapshot(snap) {
  let ended = 0;
  let latencySum = 0;
  let latencyN = 0;
  const tick = new Map();
  for (const f of snap.tasks.finished) {
    const n = Object.values(f.states).reduce((a, b) => a + b, 0);
    ended += n;
    tick.set(f.model, n);
    const ok = f.states.succeeded || 0;
    if (f.latency_ms !== null && ok) {
      latencySum += f.latency_ms * ok;
      latencyN += ok;
    }
  }
  lastTicks.push({ w: snap.tasks.window_s, ended, tick });
  if (lastTicks.length > SMOOTH) lastTicks.shift();
  const w = lastTicks.reduce((a, r) => a + r.w, 0);
  const modelRate = (model) => lastTicks.reduce((a, r) => a + (r.tick.get(model) || 0), 0) / w;
  fleetCharts.lastRate = w > 0 ? lastTicks.reduce((a, r) => a + r.ended, 0) / w : null;
  series.t.push(snap.at);
  series.online.push(snap.fleet.online);
  series.total.push(snap.fleet.online + snap.fleet.offline); // enrolled, not revoked
  series.rate.push(fleetCharts.lastRate);
  series.latency.push(latencyN ? latencySum / latencyN : null);
  let newModel = false;
  for (const model of tick.keys()) {
    if (!perModel.has(model)) {
      perModel.set(model, series.t.slice(0, -1).map(() => 0));
      models = [...perModel.keys()].sort();
      newModel = true;
    }
  }
  for (const [model, values] of perModel) values.push(w > 0 ? modelRate(model) : null);
  while (series.t.length && series.t[0] < snap.at - HISTORY_S) {
    for (const values of [...Object.values(series), ...perModel.values()]) values.shift();
  }
  if (newModel && made["c-models"]) {
    made["c-models"].destroy();
    delete made["c-models"];
    make("c-models", models, modelData());
  }
  ensureCharts();
  if (!made["c-online"]) return;
  made["c-online"].setData([series.t, series.online, series.total]);
  made["c-rate"].setData([series.t, series.rate]);
  made["c-latency"].setData([series.t, series.latency]);
  made["c-models"].setData(modelData());
}

/** Chart the load figures a device's metrics records carry (roll-ups keep them under
 * "load"); `records` newest first. */
export function deviceChart(records) {
  const fields = ["cpu_percent", "memory_percent", "disk_percent", "temperature_c"];
  const rows = records.slice().reverse()
    .map((r) => ({ ts: r.ts, load: (r.body && (r.body.load || r.body)) || {} }));
  const present = fields.filter((f) => rows.some((r) => typeof r.load[f] === "number"));
  const box = $("c-device");
  if (!present.length) {
    dropDeviceChart();
    box.replaceChildren(el("p", { class: "muted" }, "No metrics records yet."));
    return;
  }
  const data = [rows.map((r) => r.ts),
    ...present.map((f) => rows.map((r) => (typeof r.load[f] === "number" ? r.load[f] : null)))];
  const chart = made["c-device"];
  if (chart && chart.series.slice(1).map((s) => s.label).join() === present.join()) {
    chart.setData(data); // refreshed in place: no flicker every few seconds
    return;
  }
  box.replaceChildren();
  make("c-device", present, data);
}

export function dropDeviceChart() {
  if (made["c-device"]) {
    made["c-device"].destroy();
    delete made["c-device"];
  }
}

window.addEventListener("resize", () => {
  for (const [id, chart] of Object.entries(made)) chart.setSize(size($(id)));
});
