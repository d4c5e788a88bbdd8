// What the page knows of each device from the newest snapshot: its name for every table,
// its state, and how current its figures are. Load and store figures come with each
// heartbeat: once a device is offline or revoked they are its last report, shown greyed
// with their time ("as of"), never as if they were current.

import { ago, bar, bytes, el, muted, stamp } from "./util.js";

let byId = new Map();

export function remember(snap) {
  byId = new Map(snap.devices.map((d) => [d.id, d]));
}

export function device(id) {
  return byId.get(id);
}

/** A device's human name (`name` once the hub has names; the id before). */
export function displayName(d) {
  return (d && d.name) || (d && d.id) || "";
}

/** The name of the device `id`, or the id itself when the page does not know it. */
export function nameOf(id) {
  const d = byId.get(id);
  return d ? displayName(d) : id;
}

/** A device in a table: its name, and its id beneath when the two differ. */
export function deviceCell(id) {
  const d = byId.get(id);
  const name = d ? displayName(d) : id;
  return el("span", { class: "device-name", title: id },
    el("strong", {}, name), name !== id ? el("code", { class: "id" }, id) : null);
}

export function deviceState(d) {
  if (d.revoked) return "revoked";
  return d.online ? "online" : "offline";
}

export function isCurrent(d) {
  return d.online && !d.revoked;
}

/** "as of 12:03:04 (5 min ago)": the time of the figures a silent device last sent. */
function asOf(d, now) {
  return el("div", { class: "asof" },
    `as of ${stamp(d.last_heartbeat)} (${ago(d.last_heartbeat, now)})`);
}

function staleTitle(d, now) {
  return `last reported ${ago(d.last_heartbeat, now)}; the device is ${deviceState(d)}, ` +
    "so this is not current";
}

export function loadCell(d, now) {
  const load = d.load || {};
  if (typeof load.cpu_percent !== "number") return muted("–");
  const lines = [
    el("div", {}, bar(load.cpu_percent), `cpu ${Math.round(load.cpu_percent)} %`),
    typeof load.memory_percent === "number"
      ? el("div", {}, bar(load.memory_percent), `mem ${Math.round(load.memory_percent)} %`)
      : null,
  ];
  if (isCurrent(d)) return el("div", { class: "load" }, lines);
  return el("div", { class: "load stale", title: staleTitle(d, now) }, lines, asOf(d, now));
}

/** Records and bytes waiting to upload, and the fullest stream's fill (over 80 %: a
 * warning). For a device cut off, its last report with its age: the backlog only grows
 * while it cannot upload. */
export function storeCell(d, now) {
  const store = d.store;
  if (!store || !store.streams) return muted("–");
  const { records, size, fullest, lines } = backlog(store);
  const text = `${records} rec, ${bytes(size)}`;
  const fill = fullest === null ? null : el("div", {}, bar(fullest * 100), `${Math.round(fullest * 100)} %`);
  if (isCurrent(d)) {
    return el("div", { class: `store ${fullest > 0.8 ? "bad" : ""}`, title: lines.join("\n") },
      fill, el("div", {}, text));
  }
  return el("div", { class: "store stale", title: `${staleTitle(d, now)}\n${lines.join("\n")}` },
    el("div", {}, "last known:"), el("div", {}, text), fill, asOf(d, now));
}

export function backlog(store) {
  let records = 0;
  let size = 0;
  let fullest = null;
  const lines = [];
  for (const [name, s] of Object.entries((store && store.streams) || {})) {
    records += s.records;
    size += s.bytes;
    if (typeof s.fill === "number") fullest = Math.max(fullest || 0, s.fill);
    lines.push(`${name}: ${s.records} records, ${bytes(s.bytes)}` +
      (typeof s.fill === "number" ? `, ${(s.fill * 100).toFixed(1)} % full` : "") +
      (s.oldest_ts ? `, oldest written ${stamp(s.oldest_ts)}` : ""));
  }
  return { records, size, fullest, lines };
}
