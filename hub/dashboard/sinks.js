// Event sinks: each sink's state, lag and counts (GET /api/v1/sinks, viewer), read every
// READ_EVERY_S on the stream's ticks. The panel stays hidden on a hub without sinks.

import { $, ApiError, el, muted, pill, read, signOutOn, singleFlight } from "./util.js";

// A sink's change of state shows within seconds, at one small read per open page.
const READ_EVERY_S = 3;
const HEALTHY = ["delivering", "idle"];
const BROKEN = ["failing", "failed", "overflowed"];
let available = true;
let readAt = 0;

export function sinksSnapshot(snap) {
  if (!available || snap.at - readAt < READ_EVERY_S) return;
  readAt = snap.at;
  refresh();
}

/** Forget what was shown (signed out): the next sign-in reads afresh. */
export function resetSinks() {
  readAt = 0;
  $("sinks-section").hidden = true;
  $("sinks").tBodies[0].replaceChildren();
}

const refresh = singleFlight(async () => {
  try {
    render((await read("/api/v1/sinks")).items || []);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
      available = false; // a hub from before sinks
      $("sinks-section").hidden = true;
    } else if (!signOutOn(error)) {
      $("sinks-note").textContent = `Not read: ${error.message}`;
    }
  }
});

function render(sinks) {
  $("sinks-section").hidden = !sinks.length;
  $("sinks-note").textContent = "";
  $("sinks").tBodies[0].replaceChildren(...sinks.map(row));
}

/** A count of events lost to the consumers' view: red once there is one. */
function lost(n) {
  return n > 0 ? el("span", { class: "bad" }, String(n)) : String(n);
}

function row(s) {
  const kind = HEALTHY.includes(s.state) ? "active" : BROKEN.includes(s.state) ? "failed" : "offline";
  return el("tr", { "data-sink": s.name, class: BROKEN.includes(s.state) ? "broken" : "" },
    el("td", { "data-label": "sink", title: s.url }, el("strong", {}, s.name)),
    el("td", { "data-label": "kind" }, s.kind),
    el("td", { "data-label": "state", class: "state" }, pill(s.state, kind),
      s.error ? el("div", { class: "sink-error" }, s.error) : null),
    el("td", { "data-label": "lag" }, s.lag_events
      ? `${s.lag_events} event${s.lag_events === 1 ? "" : "s"} · ${seconds(s.lag_seconds)}`
      : muted("none")),
    el("td", { "data-label": "delivered" }, String(s.delivered)),
    el("td", { "data-label": "dead-lettered" }, lost(s.dead_lettered)),
    el("td", { "data-label": "overflowed" }, lost(s.overflowed)));
}

function seconds(s) {
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}
