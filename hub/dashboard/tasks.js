// The task list: the open tasks (queued, or held by a device) by default, or those in one
// state; each with its device, model, why it waits and its attempts. Operators can
// cancel a task that has not ended.
//
// Read from GET /api/v1/tasks (newest first, every open state in one request) when the snapshot's
// task counts move (at most every SOONEST_S: on a busy fleet they move every second, and
// each read makes the hub work out why each queued task waits), at least every EVERY_S,
// and at once after a change made from this page.

import { can, changed, confirmChange } from "./actions.js";
import { deviceCell, nameOf } from "./devices.js";
import {
  $, api, el, muted, pairs, pill, read, signOutOn, singleFlight, stamp, when,
} from "./util.js";

const OPEN = ["queued", "assigned", "accepted", "running"];
const PAGE = 100;
const SOONEST_S = 3;
const EVERY_S = 10;
const COLUMNS = 8;

let filter = "open";
let items = [];
let next = null; // the cursor of the next (older) page
let extended = false; // pages beyond the first were read: no refresh would keep them
let statesKey = "";
let readAt = 0;
let shownKey = "";

export function initTasks() {
  $("task-filter").addEventListener("change", () => {
    filter = $("task-filter").value;
    extended = false;
    refresh();
  });
  $("tasks-more").addEventListener("click", readMore);
  $("tasks").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action='cancel-task']");
    if (button) cancel(items.find((t) => t.id === button.getAttribute("data-task")));
  });
  window.addEventListener("outpost:changed", () => refresh());
}

export function tasksSnapshot(snap) {
  const s = snap.tasks.states;
  const held = s.assigned + s.accepted + s.running;
  $("tasks-count").textContent = `${s.queued} queued · ${held} held by devices`;
  const key = JSON.stringify(s);
  const since = Date.now() / 1000 - readAt;
  if ((key !== statesKey && since >= SOONEST_S) || since > EVERY_S) {
    statesKey = key;
    refresh();
  }
}

const refresh = singleFlight(async () => {
  if (extended) return; // older pages were read: a refresh would drop them
  readAt = Date.now() / 1000;
  try {
    const page = await read(`/api/v1/tasks?${query()}&limit=${PAGE}`);
    items = page.items;
    next = page.next_cursor;
    render();
  } catch (error) {
    if (!signOutOn(error)) {
      $("tasks").tBodies[0].replaceChildren(placeholder(`not read: ${error.message}`));
      shownKey = "";
    }
  }
});

async function readMore() {
  if (!next) return;
  try {
    const page = await read(`/api/v1/tasks?${query()}&limit=${PAGE}&cursor=${encodeURIComponent(next)}`);
    items = [...items, ...page.items];
    next = page.next_cursor;
    extended = true;
    render();
  } catch (error) {
    signOutOn(error);
  }
}

function query() {
  const states = filter === "open" ? OPEN.join(",") : filter;
  return `state=${states}&order=newest`;
}

function placeholder(text) {
  return el("tr", {}, el("td", { colSpan: COLUMNS, class: "muted" }, text));
}

function render() {
  const key = JSON.stringify([can("operator"), items.map((t) =>
    [t.id, t.state, t.device, t.waiting, t.attempt, t.error])]);
  $("tasks-more").hidden = !next;
  $("tasks-note").textContent = next ? `Showing the newest ${items.length}.` : "";
  if (key === shownKey) return; // unchanged: a button under the pointer stays put
  shownKey = key;
  $("tasks").tBodies[0].replaceChildren(...(items.length ? items.map(row)
    : [placeholder(filter === "open" ? "No open task." : `No ${filter} task.`)]));
}

function where(t) {
  if (t.device) return deviceCell(t.device);
  if (t.target && t.target.device) return muted(`for ${nameOf(t.target.device)}`);
  if (t.target && t.target.selector) return muted(`any of ${pairs(t.target.selector).join(", ")}`);
  return muted("any");
}

function row(t) {
  const open = OPEN.includes(t.state);
  const why = t.state === "queued" ? t.waiting || "–" : t.error || "";
  return el("tr", { "data-task": t.id, class: t.state },
    el("td", { "data-label": "task", title: `submitted by ${t.submitted_by} at ${when(t.created_at)}` },
      el("code", {}, t.id), el("div", { class: "muted" }, stamp(t.created_at))),
    el("td", { class: "state", "data-label": "state" }, pill(t.state)),
    el("td", { "data-label": "device" }, where(t)),
    el("td", { "data-label": "model" }, `${t.model}${t.version ? ` ${t.version}` : ""}`),
    el("td", { class: "why", "data-label": t.state === "queued" ? "why waiting" : "outcome" }, why),
    el("td", {
      "data-label": "attempts",
      title: t.excluded.length ? `excluded: ${t.excluded.map(nameOf).join(", ")}` : "",
    }, t.attempt),
    el("td", { "data-label": "deadline" }, open ? `expires ${stamp(t.deadline)}` : stamp(t.finished_at)),
    el("td", { class: "actions" }, open && can("operator")
      ? el("button", {
        type: "button", "data-action": "cancel-task", "data-task": t.id,
        "aria-label": `Cancel task ${t.id}`,
      }, "Cancel…")
      : null));
}

function cancel(t) {
  if (!t) return;
  const lines = [`${t.model}${t.version ? ` ${t.version}` : ""}, priority ${t.priority}, ${t.state}` +
    (t.device ? ` on ${nameOf(t.device)}` : "")];
  if (t.device) lines.push("Its device is told to stop it.");
  confirmChange({
    title: `Cancel task ${t.id}?`,
    lines,
    confirm: "Cancel task",
    danger: true,
    send: () => api(`/api/v1/tasks/${encodeURIComponent(t.id)}/cancel`, { method: "POST" }),
    done: (out) => `Task ${out.id} cancelled (recorded in the audit log)`,
  }).then((out) => out && changed("task"));
}
