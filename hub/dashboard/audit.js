// Recent changes, for admins: the newest entries of the audit log (every mutating API
// call, the page's own actions among them), read after each change the page makes and
// every READ_EVERY_S.

import { can } from "./actions.js";
import { nameOf } from "./devices.js";
import { $, el, pill, read, signOutOn, singleFlight, stamp, when } from "./util.js";

const SHOWN = 10;
const READ_EVERY_S = 30;
let readAt = 0;

export function initAudit() {
  window.addEventListener("outpost:changed", () => refresh());
}

export function auditSnapshot(snap) {
  if (can("admin") && snap.at - readAt > READ_EVERY_S) refresh();
}

const refresh = singleFlight(async () => {
  if (!can("admin")) return;
  readAt = Date.now() / 1000;
  try {
    const page = await read(`/api/v1/audit?limit=${SHOWN}`);
    $("audit").tBodies[0].replaceChildren(...(page.items.length ? page.items.map(row)
      : [el("tr", {}, el("td", { colSpan: 5, class: "muted" }, "nothing yet"))]));
  } catch (error) {
    signOutOn(error);
  }
});

function target(detail) {
  const device = detail.device || detail.device_id;
  if (device) return `device ${nameOf(device)}`;
  if (detail.task) return `task ${detail.task}`;
  if (detail.tasks) return `${detail.tasks} task${detail.tasks === 1 ? "" : "s"} (first ${detail.first})`;
  if (detail.rollout) return `roll-out #${detail.rollout}`;
  if (detail.model) return `${detail.model} ${detail.version || ""}`.trim();
  if (detail.subject) return `token of ${detail.subject}`;
  return "";
}

function row(e) {
  const ok = e.status < 400;
  return el("tr", { "data-audit": e.id },
    el("td", { "data-label": "time", title: when(e.at) }, stamp(e.at)),
    el("td", { "data-label": "who" }, e.subject, e.role ? el("span", { class: "muted" }, ` (${e.role})`) : null),
    el("td", { "data-label": "action" }, el("code", {}, e.action)),
    el("td", { "data-label": "what", title: JSON.stringify(e.detail) }, target(e.detail)),
    el("td", { "data-label": "answer" }, pill(String(e.status), ok ? "active" : "failed")));
}
