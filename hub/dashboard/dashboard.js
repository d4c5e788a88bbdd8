// Outpost fleet dashboard. Plain browser JavaScript modules, no build step.
//
// The token lives in sessionStorage (this tab only) and travels in the Authorization
// header of every request, never in a URL. Live data comes from the stream (stream.js);
// the role GET /api/v1/whoami names decides which actions the page offers (actions.js).

import { setRole } from "./actions.js";
import { auditSnapshot, initAudit } from "./audit.js";
import { addSnapshot, ensureCharts, fleetCharts } from "./charts.js";
import { closeDevice, deviceSnapshot, openDevice } from "./device.js";
import { remember } from "./devices.js";
import { driftSnapshot } from "./drift.js";
import { initFleet, renderFleet } from "./fleet.js";
import { initRollouts, renderRollouts } from "./rollouts.js";
import { resetSinks, sinksSnapshot } from "./sinks.js";
import { follow, stop } from "./stream.js";
import { initTasks, tasksSnapshot } from "./tasks.js";
import { $, AuthError, TOKEN_KEY, api, clock, problem } from "./util.js";

const CERT_WARN_S = 14 * 86400;
const RETRY_CAP_MS = 60000; // the longest wait between two sign-in tries, Retry-After too

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = `status ${kind || ""}`;
}

// ------------------------------------------------------------------ sign-in

// Bumped by every sign-in and sign-out: a sign-in still retrying gives up when it changes.
let attempt = 0;

function showSignIn(message) {
  attempt += 1;
  stop();
  sessionStorage.removeItem(TOKEN_KEY);
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  closeDevice();
  resetSinks();
  setRole("viewer");
  $("app").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  setStatus("signed out");
  $("token").focus();
}

/** Sign in with `token`. Only a refusal of the token (401: AuthError) forgets it: any
 * other answer (429, 5xx) or no answer at all (the hub restarting, the network down) is
 * retried, capped and jittered, the token kept, until the hub says yes or no. */
async function signIn(token) {
  attempt += 1;
  const mine = attempt;
  sessionStorage.setItem(TOKEN_KEY, token);
  let who = null;
  for (let failures = 1; !who; failures += 1) {
    let response = null;
    let why = null;
    let refused = null;
    try {
      response = await api("/api/v1/whoami"); // AuthError if the token is refused
      if (response.ok) who = await response.json();
      else why = await problem(response);
    } catch (error) {
      if (error instanceof AuthError) refused = error;
      else why = error.message || String(error); // no answer (fetch failed), or not JSON
    }
    if (mine !== attempt) return; // signed out, or in with another token, meanwhile
    if (refused) throw refused;
    if (why !== null) {
      await waitToRetry(why, failures, response && response.headers.get("Retry-After"));
      if (mine !== attempt) return;
    }
  }
  $("who").textContent = `${who.subject} (${who.role})`;
  setRole(who.role);
  $("signin").hidden = true;
  $("signin-error").textContent = "";
  $("app").hidden = false;
  $("signout").hidden = false;
  ensureCharts();
  follow({
    snapshot: onSnapshot,
    status: setStatus,
    refused: (message) => showSignIn(`Signed out: ${message}`),
  });
}

/** Say why the hub did not answer yes or no, and wait before asking again: its
 * Retry-After if it gave one, else a jittered back-off (as stream.js does). */
async function waitToRetry(why, failures, retryAfter) {
  setStatus(`retrying (${why})`, "retrying");
  $("signout").hidden = false; // a way out while it retries
  if (!$("signin").hidden) $("signin-error").textContent = `Not signed in yet: ${why}; retrying…`;
  const asked = Number(retryAfter) * 1000;
  const backoff = Math.random() * Math.min(10000, 500 * 2 ** failures);
  const delay = Math.min(RETRY_CAP_MS, asked > 0 ? asked + Math.random() * 1000 : backoff);
  await new Promise((resolve) => setTimeout(resolve, delay));
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  try {
    await signIn(token);
  } catch (error) {
    showSignIn(error instanceof AuthError ? `Refused: ${error.message}` : String(error));
  }
});

$("signout").addEventListener("click", () => showSignIn(""));
window.addEventListener("outpost:signed-out", (event) => showSignIn(`Signed out: ${event.detail}`));

// ------------------------------------------------------------------ snapshots

function onSnapshot(snap) {
  setStatus(`live · ${clock(snap.at)}`, "live");
  remember(snap);
  renderTiles(snap);
  renderFleet(snap);
  renderRollouts(snap);
  addSnapshot(snap);
  deviceSnapshot(snap);
  tasksSnapshot(snap);
  auditSnapshot(snap);
  driftSnapshot(snap);
  sinksSnapshot(snap);
}

function renderTiles(snap) {
  const s = snap.tasks.states;
  // Of the enrolled devices that may connect: revoked ones have a tile of their own.
  $("t-online").textContent = `${snap.fleet.online} / ${snap.fleet.online + snap.fleet.offline}`;
  $("t-revoked").textContent = snap.fleet.revoked;
  $("t-queued").textContent = s.queued;
  $("t-running").textContent = s.assigned + s.accepted + s.running;
  $("t-rate").textContent = fleetCharts.lastRate === null ? "–" : fleetCharts.lastRate.toFixed(1);
  $("t-policy").textContent = snap.devices.filter(
    (d) => d.policy && d.policy.published > d.policy.applied,
  ).length;
  $("t-certs").textContent = snap.devices.filter(
    (d) => !d.revoked && d.certificate.not_after && d.certificate.not_after - snap.at < CERT_WARN_S,
  ).length;
}

// ------------------------------------------------------------------ start

initFleet(openDevice);
initTasks();
initRollouts();
initAudit();

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) {
  signIn(saved).catch((error) =>
    showSignIn(error instanceof AuthError ? `Signed out: ${error.message}` : String(error)));
} else {
  showSignIn("");
}
