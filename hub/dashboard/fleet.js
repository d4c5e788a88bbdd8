// The fleet table: search, filters (site, group, state, model), sort, and rows grouped
// by site. The choices live in the page's address (#q=pump&state=offline...), so a view
// can be bookmarked or sent to a colleague; the token never is.

import {
  deviceState, displayName, isCurrent, loadCell, storeCell, backlog,
} from "./devices.js";
import { $, ago, el, muted, pairs, pill, when } from "./util.js";

const CERT_WARN_S = 14 * 86400;
const COLUMNS = ["device", "state", "site", "labels", "profile", "models", "policy", "load",
  "store", "last seen", "certificate"];
const NO_SITE = "(no site)";
// Problems first: a silent device before a live one; revoked ones last (they are final).
const STATE_ORDER = { offline: 0, online: 1, revoked: 2 };

const SORTS = {
  name: (a, b) => displayName(a).localeCompare(displayName(b), undefined, { numeric: true }),
  state: (a, b) => STATE_ORDER[deviceState(a)] - STATE_ORDER[deviceState(b)],
  seen: (a, b) => (a.last_seen || 0) - (b.last_seen || 0),
  cpu: (a, b) => cpu(b) - cpu(a),
  backlog: (a, b) => backlog(b.store).records - backlog(a.store).records,
  cert: (a, b) => (a.certificate.not_after || Infinity) - (b.certificate.not_after || Infinity),
};
const DEFAULTS = { q: "", site: "", group: "", state: "", model: "", sort: "name", bysite: "1" };
const filters = { ...DEFAULTS };
let selected = null;
let onOpen = () => {};
let last = null;

function cpu(d) {
  return d.load && typeof d.load.cpu_percent === "number" ? d.load.cpu_percent : -1;
}

/** Wire the toolbar and the rows; `open(id)` shows a device. */
export function initFleet(open) {
  onOpen = open;
  readAddress();
  for (const key of Object.keys(DEFAULTS)) {
    const input = $(`f-${key}`);
    if (key === "bysite") input.checked = filters.bysite === "1";
    else input.value = filters[key];
    input.addEventListener(key === "q" ? "input" : "change", () => {
      filters[key] = key === "bysite" ? (input.checked ? "1" : "") : input.value;
      writeAddress();
      if (last) renderFleet(last);
    });
  }
  $("f-clear").addEventListener("click", () => {
    Object.assign(filters, DEFAULTS, { sort: filters.sort, bysite: filters.bysite });
    for (const key of ["q", "site", "group", "state", "model"]) $(`f-${key}`).value = "";
    writeAddress();
    if (last) renderFleet(last);
  });
  const table = $("fleet");
  table.addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-device]");
    if (row) onOpen(row.getAttribute("data-device"));
  });
  table.addEventListener("keydown", (event) => {
    const row = event.target.closest("tr[data-device]");
    if (row && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      onOpen(row.getAttribute("data-device"));
    }
  });
}

export function select(id) {
  selected = id;
  for (const row of $("fleet").querySelectorAll("tr[data-device]")) {
    row.classList.toggle("selected", row.getAttribute("data-device") === id);
  }
}

function readAddress() {
  const found = new URLSearchParams(location.hash.slice(1));
  for (const key of Object.keys(DEFAULTS)) {
    if (found.has(key)) filters[key] = found.get(key);
  }
  if (!(filters.sort in SORTS)) filters.sort = DEFAULTS.sort;
}

function writeAddress() {
  const changedOnly = Object.entries(filters).filter(([k, v]) => v !== DEFAULTS[k]);
  const text = new URLSearchParams(changedOnly).toString();
  history.replaceState(null, "", text ? `#${text}` : location.pathname + location.search);
}

function matches(d) {
  if (filters.state && deviceState(d) !== filters.state) return false;
  if (filters.site && (d.labels.site || NO_SITE) !== filters.site) return false;
  if (filters.group && d.labels.group !== filters.group) return false;
  if (filters.model && !d.models.some((m) => m.name === filters.model)) return false;
  const q = filters.q.trim().toLowerCase();
  if (!q) return true;
  const text = [d.name, d.id, d.profile, d.agent_version, ...pairs(d.labels),
    ...d.models.map((m) => `${m.name} ${m.version}`)].join(" ").toLowerCase();
  return q.split(/\s+/).every((word) => text.includes(word));
}

// A select's options follow the fleet; rebuilt only when they change, so an open list or
// the current choice is not disturbed every second.
function offer(select, values, anyText) {
  const current = select.value;
  const wanted = [...new Set(values)].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  if (current && !wanted.includes(current)) wanted.push(current); // kept while chosen
  const key = wanted.join("\n");
  if (select.getAttribute("data-options") === key) return;
  select.setAttribute("data-options", key);
  select.replaceChildren(el("option", { value: "" }, anyText),
    ...wanted.map((v) => el("option", { value: v }, v)));
  select.value = current;
}

export function renderFleet(snap) {
  last = snap;
  const all = snap.devices;
  offer($("f-site"), all.map((d) => d.labels.site || NO_SITE), "all sites");
  offer($("f-group"), all.filter((d) => d.labels.group).map((d) => d.labels.group), "all groups");
  offer($("f-model"), all.flatMap((d) => d.models.map((m) => m.name)), "any model");
  const shown = all.filter(matches).sort((a, b) => SORTS[filters.sort](a, b) || SORTS.name(a, b));
  const table = $("fleet");
  const bodies = [];
  if (!shown.length) {
    bodies.push(el("tbody", {}, el("tr", { class: "empty" },
      el("td", { colSpan: COLUMNS.length, class: "muted" },
        all.length ? "No device matches these filters." : "No device is enrolled yet."))));
  } else if (filters.bysite === "1") {
    const sites = new Map();
    for (const d of shown) {
      const site = d.labels.site || NO_SITE;
      if (!sites.has(site)) sites.set(site, []);
      sites.get(site).push(d);
    }
    const names = [...sites.keys()].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    for (const site of names) {
      const devices = sites.get(site);
      bodies.push(el("tbody", { "data-site": site }, groupRow(site, devices),
        devices.map((d) => row(d, snap.at))));
    }
  } else {
    bodies.push(el("tbody", {}, shown.map((d) => row(d, snap.at))));
  }
  // Rows are rebuilt each snapshot: a row that had the keyboard's focus gets it back.
  const focused = document.activeElement && document.activeElement.closest
    ? document.activeElement.closest("tr[data-device]") : null;
  for (const body of [...table.tBodies]) body.remove();
  table.append(...bodies);
  if (focused) {
    const again = table.querySelector(`tr[data-device="${CSS.escape(focused.getAttribute("data-device"))}"]`);
    if (again) again.focus({ preventScroll: true });
  }
  const { total } = snap.fleet;
  const partial = snap.fleet.shown < total ? ` (the hub sends the first ${snap.fleet.shown} of ${total})` : "";
  $("fleet-count").textContent = shown.length === all.length
    ? `${all.length} devices${partial}` : `${shown.length} of ${all.length} shown${partial}`;
}

function groupRow(site, devices) {
  const count = (state) => devices.filter((d) => deviceState(d) === state).length;
  const parts = [`${devices.length} device${devices.length === 1 ? "" : "s"}`];
  for (const state of ["online", "offline", "revoked"]) {
    if (count(state)) parts.push(`${count(state)} ${state}`);
  }
  return el("tr", { class: "group" },
    el("th", { colSpan: COLUMNS.length, scope: "rowgroup" }, site, " ",
      el("small", {}, parts.join(" · "))));
}

function labelList(labels) {
  const shown = pairs(labels, ["site"]).map((p) => el("span", { class: "label" }, p));
  return shown.length ? shown : "–";
}

function cell(label, ...children) {
  return el("td", { "data-label": label }, ...children);
}

function row(d, now) {
  const state = deviceState(d);
  const name = displayName(d);
  const models = d.models.length
    ? d.models.map((m) =>
      el("div", { class: m.state === "ready" ? "" : "bad", title: m.error || m.sha256 },
        el("span", {}, m.name), " ", el("span", {}, m.version),
        m.state === "ready" ? null : ` (${m.state})`))
    : muted("none");
  const p = d.policy;
  const policy = !p
    ? muted("none")
    : el("span", {
      class: p.published > p.applied ? "warn" : "",
      title: `published v${p.published}, applied v${p.applied}` +
        (p.rejected ? `, refused v${p.rejected}` : ""),
    }, `v${p.applied}` + (p.published > p.applied ? ` (v${p.published} pending)` : ""));
  const notAfter = d.certificate.not_after;
  const left = notAfter ? notAfter - now : null;
  const cert = el("span", {
    class: !d.revoked && left !== null && left < CERT_WARN_S ? "bad" : "",
    title: notAfter ? `serial ${d.certificate.serial}, valid until ${when(notAfter)}` : "",
  }, d.revoked ? muted("revoked") : notAfter
    ? `${new Date(notAfter * 1000).toLocaleDateString()} (${Math.round(left / 86400)} d)` : "–");
  const stateCell = el("td", { class: "state", "data-label": "state" }, pill(state));
  // A courier site is heard of by the bundles carried from it, never "online".
  const viaBundle = d.bundle_at && d.bundle_at >= (d.last_heartbeat || 0);
  const seen = d.revoked
    ? `revoked ${ago(d.revoked_at, now)}`
    : viaBundle ? `${ago(d.bundle_at, now)} (via bundle)`
      : `${ago(d.last_seen, now)}${isCurrent(d) ? "" : " (silent)"}`;
  return el("tr", {
    "data-device": d.id, class: `${state}${d.id === selected ? " selected" : ""}`, tabIndex: 0,
    "aria-label": `${name}, ${state}`,
  },
  el("td", { class: "name", "data-label": "device" },
    el("strong", {}, name), name !== d.id ? el("code", { class: "id" }, d.id) : null),
  stateCell,
  el("td", { class: "site", "data-label": "site" }, d.labels.site || "–"),
  cell("labels", labelList(d.labels)),
  cell("profile", d.profile),
  el("td", { class: "models", "data-label": "models" }, models),
  cell("policy", policy),
  el("td", { class: "load-cell", "data-label": "load" }, loadCell(d, now)),
  el("td", { class: "store-cell", "data-label": "store" }, storeCell(d, now)),
  el("td", { class: "seen", "data-label": "last seen", title: when(d.last_seen) }, seen),
  cell("certificate", cert));
}
