// Model drift: per model version, each device's population stability index against the
// rest of the fleet (GET /api/v1/drift, read every READ_EVERY_S; absent on some hubs).

import { deviceCell } from "./devices.js";
import { $, ApiError, el, pill, read, signOutOn } from "./util.js";

const READ_EVERY_S = 10;
let available = true;
let readAt = 0;

export function driftSnapshot(snap) {
  if (!available || snap.at - readAt <= READ_EVERY_S) return;
  readAt = snap.at;
  read("/api/v1/drift").then(render, (error) => {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
      available = false; // this hub has no drift report
    } else signOutOn(error);
  });
}

function render(body) {
  $("drift-section").hidden = false;
  const rows = (body.items || []).flatMap((v) =>
    (v.devices || []).map((d) => ({ model: v.model, version: v.version, ...d })));
  if (!rows.length) {
    $("drift").replaceChildren(el("p", { class: "muted" },
      "No drift data yet (devices report model statistics in their metrics roll-ups)."));
    return;
  }
  rows.sort((a, b) => Number(b.flagged) - Number(a.flagged) || a.model.localeCompare(b.model));
  const psi = (x) => (x === null || x === undefined ? "–" : x.toFixed(3));
  const head = el("tr", {}, ...["model", "version", "device", "inferences", "PSI labels",
    "PSI confidence", "level"].map((k) => el("th", {}, k)));
  const shown = rows.slice(0, 200).map((r) =>
    el("tr", { class: r.flagged ? "bad" : "" },
      el("td", {}, r.model), el("td", {}, r.version), el("td", {}, deviceCell(r.device_id)),
      el("td", {}, r.count), el("td", {}, psi(r.psi_labels)), el("td", {}, psi(r.psi_confidence)),
      el("td", {}, r.flagged ? pill("drift", "failed") : r.level)));
  $("drift").replaceChildren(
    el("p", { class: "muted" }, `Population stability index over the last ${Math.round(body.window_s / 60)} min; ` +
      `flagged from ${body.threshold}.`),
    el("div", { class: "scroll" }, el("table", { class: "grid small" }, el("thead", {}, head), el("tbody", {}, ...shown))));
}
