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

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = `status ${kind || ""}`;
}

// ------------------------------------------------------------------ sign-in

function showSignIn(message) {
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

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  const response = await api("/api/v1/whoami"); // AuthError if refused
  if (!response.ok) throw new AuthError(await problem(response));
  const who = await response.json();
  $("who").textContent = `${who.subject} (${who.role})`;
  setRole(who.role);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  ensureCharts();
  follow({
    snapshot: onSnapshot,
    status: setStatus,
    refused: (message) => showSignIn(`Signed out: ${message}`),
  });
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
