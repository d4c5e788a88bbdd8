// The device view: its facts (from every snapshot), its event log (link lost and
// restored, models, policy, renewals, revocation, renames), its recent results and its
// agent's own events and metrics; all kept current while the view is open. Admins can
// rename, relabel and revoke it from here; operators can have the hub explain a flagged
// result that carried its input (explain.js).

import { can, changed, confirmChange } from "./actions.js";
import { deviceChart, dropDeviceChart } from "./charts.js";
import {
  device, deviceState, displayName, loadCell, storeCell,
} from "./devices.js";
import {
  explainingSeq, explanationLine, forgetExplanation, noteDeviceExplanations,
  showExplanationsOf, whyCell,
} from "./explain.js";
import { select } from "./fleet.js";
import {
  $, ApiError, ago, api, clock, el, muted, pairs, parsePairs, pill, read, signOutOn,
  singleFlight, stamp, when,
} from "./util.js";

const RECENT = 15; // records shown per stream
const LOG_PAGE = 50;
const LOG_MAX = 500; // the hub keeps this many events per device
const LOG_EVERY_S = 10; // the log is read again at least this often (sooner on a change)
const RECORDS_EVERY_S = 5; // and the records at most this often, when the device sent some
const RESULT_COLUMNS = 6;

// The event log's kinds, as an operator reads them, and how each is marked.
const KINDS = {
  enrolled: ["enrolled", ""],
  online: ["link up", "ok"],
  offline: ["link lost", "off"],
  model_activated: ["model activated", "ok"],
  model_failed: ["model failed", "bad"],
  model_rolled_back: ["model rolled back", "bad"],
  policy_applied: ["policy applied", "ok"],
  policy_refused: ["policy refused", "bad"],
  renewed: ["certificate renewed", "ok"],
  revoked: ["revoked", "bad"],
  renamed: ["renamed", ""],
  relabelled: ["relabelled", ""],
};

let selected = null;
let signature = "";
let logReadAt = 0;
let logLimit = LOG_PAGE;
let logMissing = false; // this hub has no event log (an older one)
let recordsReadAt = 0;
let recordsSeen = 0; // the device's last_seen when its records were last read
let shownResults = []; // the results last read, newest first (drawn again when needed)

const path = () => `/api/v1/devices/${encodeURIComponent(selected)}`;

showExplanationsOf(() => selected, () => {
  if (shownResults.length) renderResults(shownResults);
});

export function openDevice(id) {
  selected = id;
  signature = "";
  logLimit = LOG_PAGE;
  recordsSeen = 0;
  shownResults = [];
  noteDeviceExplanations([]);
  forgetExplanation();
  $("device").hidden = false;
  select(id);
  const d = device(id);
  title(d);
  if (d) renderFacts(d, Date.now() / 1000);
  for (const id_ of ["device-log", "device-results", "device-events"]) {
    const columns = id_ === "device-results" ? RESULT_COLUMNS : 3;
    $(id_).tBodies[0].replaceChildren(placeholder(columns, "reading…"));
  }
  $("device").scrollIntoView({ behavior: "smooth", block: "start" });
  refreshLog();
  refreshRecords();
}

export function closeDevice() {
  selected = null;
  forgetExplanation();
  $("device").hidden = true;
  dropDeviceChart();
  select(null);
}

/** Keep the open view current: facts every snapshot; the log when the device changed
 * (or every LOG_EVERY_S), its records when it sent some. */
export function deviceSnapshot(snap) {
  if (!selected) return;
  const d = device(selected);
  title(d);
  if (!d) return;
  renderFacts(d, snap.at);
  const now = Date.now() / 1000;
  const sig = JSON.stringify([d.online, d.revoked, d.name, d.labels, d.models, d.policy,
    d.certificate.serial]);
  if (sig !== signature || now - logReadAt > LOG_EVERY_S) {
    signature = sig;
    refreshLog();
  }
  if ((d.last_seen || 0) > recordsSeen && now - recordsReadAt > RECORDS_EVERY_S) refreshRecords();
}

window.addEventListener("outpost:changed", () => {
  if (selected) refreshLog();
});

function title(d) {
  const name = d ? displayName(d) : selected;
  $("device-title").replaceChildren(...[`Device ${name}`,
    name !== selected ? el("code", { class: "id" }, selected) : null,
    d ? null : muted(" (no longer in the fleet)")].filter(Boolean));
  const admin = can("admin") && Boolean(d);
  $("device-edit").hidden = !admin;
  $("device-revoke").hidden = !admin || Boolean(d && d.revoked);
}

function renderFacts(d, now) {
  const state = deviceState(d);
  const since = {
    online: "",
    offline: ` silent since ${stamp(d.last_seen)} (${ago(d.last_seen, now)})`,
    revoked: ` ${when(d.revoked_at)} by ${d.revoked_by || "(not recorded)"}`,
  }[state];
  const facts = [
    ["state", [pill(state), since]],
    ["name", d.name || d.id], ["id", el("code", {}, d.id)],
    ["site", d.labels.site || "–"], ["labels", pairs(d.labels, ["site"]).join(", ") || "–"],
    ["profile", d.profile], ["agent", d.agent_version || "–"], ["runtime", d.runtime || "–"],
    ["load", loadCell(d, now)], ["store", storeCell(d, now)],
    ["via bundle", d.bundle_at ? `last seen via bundle, at ${stamp(d.bundle_at)}` : "–"],
    ["task slots", d.task_slots],
    ["task latency", d.task_latency_ms ? `${d.task_latency_ms.toFixed(1)} ms` : "–"],
    ["last heartbeat", `${ago(d.last_heartbeat, now)} (every ${d.heartbeat_interval || "?"} s)`],
    ["enrolled", when(d.enrolled_at)], ["certificate", `until ${when(d.certificate.not_after)}`],
    ["policy", d.policy ? `applied v${d.policy.applied}, published v${d.policy.published}` : "none"],
    ["temperature", d.load && d.load.temperature_c != null ? `${d.load.temperature_c} °C` : "–"],
  ];
  $("device-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function placeholder(columns, text) {
  return el("tr", {}, el("td", { colSpan: columns, class: "muted" }, text));
}

const refreshLog = singleFlight(async () => {
  const id = selected;
  if (!id || logMissing) return;
  logReadAt = Date.now() / 1000;
  try {
    const page = await read(`${path()}/events?limit=${logLimit}`);
    if (selected !== id) return;
    renderLog(page.items, page.next_cursor !== null && page.next_cursor !== undefined);
  } catch (error) {
    if (signOutOn(error) || selected !== id) return;
    if (error instanceof ApiError && (error.status === 404 || error.status === 405) && device(id)) {
      logMissing = true; // a hub from before the event log
      $("device-log").tBodies[0].replaceChildren(placeholder(3, "This hub keeps no event log."));
      return;
    }
    $("device-log").tBodies[0].replaceChildren(placeholder(3, `not read: ${error.message}`));
  }
});

function renderLog(items, more) {
  $("device-log").tBodies[0].replaceChildren(...(items.length ? items.map((e) => {
    const [text, kind] = KINDS[e.kind] || [e.kind.replace(/_/g, " "), ""];
    return el("tr", { "data-kind": e.kind },
      el("td", { title: when(e.at) }, stamp(e.at)),
      el("td", {}, el("span", { class: `event ${kind}` }, text)),
      el("td", {}, e.detail || ""));
  }) : [placeholder(3, "none")]));
  $("device-log-more").hidden = !more || logLimit >= LOG_MAX;
}

$("device-log-more").addEventListener("click", () => {
  logLimit = Math.min(LOG_MAX, logLimit + LOG_PAGE);
  refreshLog();
});

const refreshRecords = singleFlight(async () => {
  const id = selected;
  if (!id) return;
  const d = device(id);
  recordsReadAt = Date.now() / 1000;
  recordsSeen = (d && d.last_seen) || 0;
  try {
    const marks = new Map((await read(`${path()}/streams`)).items.map((s) => [s.stream, s.hwm]));
    const [results, events, metrics] = await Promise.all(
      ["results", "events", "metrics"].map((s) =>
        recent(s, marks.get(s) || 0, s === "metrics" ? 240 : RECENT)));
    if (selected !== id) return;
    noteDeviceExplanations(events);
    renderResults(results);
    renderEvents(events);
    deviceChart(metrics);
  } catch (error) {
    if (signOutOn(error) || selected !== id) return;
    $("device-results").tBodies[0].replaceChildren(
      placeholder(RESULT_COLUMNS, `not read: ${error.message}`));
  }
});

// The newest `count` records of a stream: a page after its high-water mark less `count`.
async function recent(stream, hwm, count) {
  if (!hwm) return [];
  const after = Math.max(0, hwm - count);
  // Results without their carried inputs' bytes: the view needs to know one is there
  // (to offer Explain), not the image; the hub reads it when asked to explain.
  const query = `stream=${stream}&after=${after}&limit=${Math.min(count, 500)}&inputs=false`;
  const page = await read(`${path()}/records?${query}`);
  return page.items.reverse(); // newest first
}

function renderResults(records) {
  shownResults = records;
  $("device-results").tBodies[0].replaceChildren(...(records.length ? records.map((r) => {
    const b = r.body || {};
    const outcome = b.status === "failed" ? `failed: ${b.error || ""}`
      : b.label !== undefined ? `${b.label} (${(+b.confidence || 0).toFixed(2)})` : summary(b);
    const open = explainingSeq() === r.seq;
    // data-label: each value's name where the table becomes cards (narrow screens)
    return el("tr", { "data-seq": r.seq, class: open ? "explaining" : null },
      el("td", { "data-label": "seq" }, r.seq), el("td", { "data-label": "time" }, clock(r.ts)),
      el("td", { "data-label": "model" }, b.model ? `${b.model} ${b.version || ""}` : "–"),
      el("td", { "data-label": "outcome" }, outcome),
      el("td", { "data-label": "latency" },
        b.latency_ms !== undefined ? `${b.latency_ms} ms` : "–"),
      el("td", { class: "why", "data-label": "explanation" }, whyCell(r.seq, b)));
  }) : [placeholder(RESULT_COLUMNS, "none")]));
}

function renderEvents(records) {
  $("device-events").tBodies[0].replaceChildren(...(records.length ? records.map((r) =>
    el("tr", {}, el("td", {}, r.seq), el("td", {}, clock(r.ts)), el("td", {}, summary(r.body))))
    : [placeholder(3, "none")]));
}

function summary(body) {
  if (body === null || typeof body !== "object") return String(body);
  if (body.event === "explanation") return explanationLine(body);
  const name = body.event || body.kind || body.type || "";
  const rest = Object.entries(body).filter(([k]) => !["event", "kind", "type"].includes(k))
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  return `${name} ${rest}`.trim().slice(0, 200);
}

// ------------------------------------------------------------------ admin: change it

$("device-close").addEventListener("click", closeDevice);

$("device-edit").addEventListener("click", () => {
  const d = device(selected);
  if (!d) return;
  $("edit-title").textContent = `Rename or relabel ${displayName(d)}`;
  $("edit-name").value = d.name || "";
  $("edit-name-row").hidden = d.name === undefined; // a hub from before names
  $("edit-labels").value = pairs(d.labels).join("\n");
  $("edit-error").textContent = "";
  $("edit-dialog").showModal();
  $("edit-name").focus();
});

$("edit-cancel").addEventListener("click", () => $("edit-dialog").close());

$("edit-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const d = device(selected);
  if (!d) return;
  let wanted;
  try {
    wanted = parsePairs($("edit-labels").value);
  } catch (error) {
    $("edit-error").textContent = error.message;
    return;
  }
  const labels = {};
  const lines = [];
  for (const [k, v] of Object.entries(wanted)) {
    if (d.labels[k] !== v) {
      labels[k] = v;
      lines.push(d.labels[k] === undefined ? `add the label ${k}=${v}` : `change ${k} from ${d.labels[k]} to ${v}`);
    }
  }
  for (const k of Object.keys(d.labels)) {
    if (!(k in wanted)) {
      labels[k] = null; // null removes it
      lines.push(`remove the label ${k}=${d.labels[k]}`);
    }
  }
  const body = { labels };
  const name = $("edit-name").value.trim();
  if (d.name !== undefined && name && name !== d.name) {
    body.name = name;
    lines.unshift(`rename ${d.name} to ${name}`);
  }
  if (!lines.length) {
    $("edit-error").textContent = "Nothing changed.";
    return;
  }
  $("edit-dialog").close();
  const id = d.id;
  confirmChange({
    title: `Change ${displayName(d)}?`,
    lines: [...lines, "Its policy is worked out again from its new labels."],
    confirm: "Save changes",
    send: () => api(`/api/v1/devices/${encodeURIComponent(id)}`, { method: "PATCH", body }),
    done: (out) => `${displayName(out)} saved (recorded in the audit log)`,
  }).then((out) => out && changed("device"));
});

$("device-revoke").addEventListener("click", () => {
  const d = device(selected);
  if (!d) return;
  const name = displayName(d);
  confirmChange({
    title: `Revoke ${name}?`,
    lines: [
      "Its certificates are revoked: the broker refuses them and drops its connection.",
      "It can no longer renew. This cannot be undone.",
    ],
    confirm: "Revoke device",
    danger: true,
    typed: name,
    send: () => api(`/api/v1/devices/${encodeURIComponent(d.id)}/revoke`, { method: "POST" }),
    done: (out) => `${name} revoked` +
      (out.broker_reloaded ? "; the broker reloaded its revocation list" : "; the broker did not confirm a reload") +
      " (recorded in the audit log)",
  }).then((out) => out && changed("device"));
});
