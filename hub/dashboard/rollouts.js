// Roll-outs: the newest few with their progress per device (from the snapshots); admins
// start one (a model version, the labels its devices carry, the share of canaries) and
// halt one in progress.

import { can, changed, confirmChange } from "./actions.js";
import { displayName, nameOf } from "./devices.js";
import { $, api, el, pairs, parsePairs, pill, read, signOutOn, when } from "./util.js";

const IN_PROGRESS = ["shadow", "canary", "rolling"];
let shownKey = "";
let rollouts = [];
let snapshotDevices = [];

export function initRollouts() {
  $("rollouts").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action='halt-rollout']");
    if (button) halt(rollouts.find((r) => String(r.id) === button.getAttribute("data-rollout")));
  });
  $("rollout-start").addEventListener("click", openStart);
  $("ro-cancel").addEventListener("click", () => $("rollout-dialog").close());
  $("rollout-form").addEventListener("submit", (event) => {
    event.preventDefault();
    reviewStart();
  });
  for (const id of ["ro-selector", "ro-canary"]) $(id).addEventListener("input", showMatch);
}

export function renderRollouts(snap) {
  snapshotDevices = snap.devices;
  rollouts = snap.rollouts;
  // The count in an open start dialog follows the fleet: devices enrolled, relabelled or
  // revoked while the admin types change what the roll-out would reach.
  if ($("rollout-dialog").open) showMatch();
  // Rebuilt only when something changed: a halt button under the pointer stays put.
  const key = JSON.stringify([can("admin"), rollouts, snap.devices.map((d) => [d.id, d.name])]);
  if (key === shownKey) return;
  shownKey = key;
  const box = $("rollouts");
  if (!rollouts.length) {
    box.replaceChildren(el("p", { class: "muted" }, "No roll-outs."));
    return;
  }
  box.replaceChildren(...rollouts.map((r) => {
    const total = r.devices.length || 1;
    const progress = el("div", { class: "progress", title: JSON.stringify(r.counts) },
      ...Object.entries(r.counts).map(([state, n]) => {
        const part = el("span", { class: state, title: `${state}: ${n}` });
        part.style.flex = String(n / total);
        return part;
      }));
    const selector = pairs(r.selector).join(", ") || "every device";
    return el("div", { class: "rollout", "data-rollout": r.id },
      el("div", { class: "rollout-head" },
        el("strong", {}, `#${r.id} ${released(r)}`), " ", pill(r.state),
        IN_PROGRESS.includes(r.state) && can("admin")
          ? el("button", {
            type: "button", class: "danger small", "data-action": "halt-rollout",
            "data-rollout": r.id, "aria-label": `Halt roll-out ${r.id}`,
          }, "Halt…")
          : null),
      el("div", { class: "muted" },
        `${selector} · ${Object.entries(r.counts).map(([s, n]) => `${n} ${s}`).join(", ")}` +
        `${r.reason ? ` · ${r.reason}` : ""} · started ${when(r.created_at)} by ${r.created_by}`),
      progress,
      r.shadow ? shadowView(r.shadow) : null,
      el("ul", {}, ...r.devices.map((d) =>
        el("li", { title: d.detail || d.device }, nameOf(d.device), " ", d.stage, " ", pill(d.state)))));
  }));
}

// A shadow roll-out's comparison: live beside candidate, and how far it is from a verdict.
function shadowView(s) {
  const fmt = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  const side = (name, x) => el("tr", {},
    el("th", {}, name), el("td", {}, fmt(x.latency_p50_ms, 3)), el("td", {}, fmt(x.latency_p99_ms, 3)),
    el("td", {}, fmt(x.latency_mean_ms, 3)), el("td", {}, fmt(x.confidence_mean)));
  const c = s.criteria;
  const verdict = `${s.samples} of ${s.min_samples} samples (${Math.round(s.progress * 100)} %)` +
    ` · agreement ${fmt(s.agreement, 3)} (needs ≥ ${c.agreement_min})` +
    ` · latency ratio ${fmt(s.latency_ratio)} (needs ≤ ${c.latency_ratio_max})`;
  const disagreements = Object.entries(s.confusion)
    .filter(([pair]) => pair.split("|")[0] !== pair.split("|")[1])
    .sort((a, b) => b[1] - a[1]).slice(0, 4)
    .map(([pair, n]) => `${pair.replace("|", " → ")}: ${n}`).join(", ");
  return el("div", { class: "shadow" },
    el("div", { class: "muted" }, verdict),
    el("table", { class: "shadow-compare" },
      el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {}, "p50 ms"), el("th", {}, "p99 ms"),
        el("th", {}, "mean ms"), el("th", {}, "confidence"))),
      el("tbody", {}, side("live", s.live), side("candidate", s.candidate))),
    disagreements ? el("div", { class: "muted" }, `disagreements (live → candidate): ${disagreements}`) : null);
}

function halt(r) {
  if (!r) return;
  confirmChange({
    title: `Halt roll-out #${r.id} of ${released(r)}?`,
    lines: [
      `Devices not yet given ${r.version} never get it.`,
      "Those that were go back to the version they ran before.",
    ],
    confirm: "Halt roll-out",
    danger: true,
    reason: true,
    send: (reason) => api(`/api/v1/rollouts/${r.id}/halt`, { method: "POST", body: { reason } }),
    done: (out) => `Roll-out #${out.id} ${out.state} (recorded in the audit log)`,
  }).then((out) => out && changed("rollout"));
}

async function openStart() {
  $("ro-error").textContent = "";
  const select = $("ro-model");
  select.replaceChildren(el("option", { value: "" }, "reading…"));
  $("rollout-dialog").showModal();
  showMatch();
  try {
    const models = (await read("/api/v1/models")).items;
    select.replaceChildren(...(models.length
      ? models.map((m) => el("option", { value: JSON.stringify([m.name, m.version]) },
        `${m.name} ${m.version}${m.description ? ` – ${m.description}` : ""}`))
      : [el("option", { value: "" }, "no model uploaded yet")]));
  } catch (error) {
    if (!signOutOn(error)) $("ro-error").textContent = `Models not read: ${error.message}`;
  }
}

// What a roll-out gives its devices: a model version, or the agent itself.
function released(r) {
  return r.kind === "agent" ? `the agent ${r.version}` : `${r.model} ${r.version}`;
}

// Which devices a selector picks now (revoked ones never get a release).
function targets(selector) {
  return snapshotDevices.filter((d) => !d.revoked &&
    Object.entries(selector).every(([k, v]) => d.labels[k] === v));
}

function form() {
  const selector = parsePairs($("ro-selector").value);
  const share = Number($("ro-canary").value);
  if (!Number.isFinite(share) || share < 0 || share > 100) throw new Error("canaries: 0 to 100 %");
  return { selector, share: share / 100 };
}

function showMatch() {
  try {
    const { selector, share } = form();
    const found = targets(selector);
    const canaries = found.length ? Math.max(1, Math.ceil(found.length * share)) : 0;
    $("ro-match").textContent = `Matches ${found.length} device${found.length === 1 ? "" : "s"} ` +
      `now; about ${canaries} first as canaries.`;
  } catch (error) {
    $("ro-match").textContent = error.message;
  }
}

function reviewStart() {
  let choice;
  try {
    choice = form();
  } catch (error) {
    $("ro-error").textContent = error.message;
    return;
  }
  if (!$("ro-model").value) {
    $("ro-error").textContent = "Choose a model version.";
    return;
  }
  const [model, version] = JSON.parse($("ro-model").value);
  const found = targets(choice.selector);
  const names = found.slice(0, 8).map(displayName).join(", ") + (found.length > 8 ? ", …" : "");
  const where = pairs(choice.selector).join(", ") || "every device";
  $("rollout-dialog").close();
  confirmChange({
    title: `Roll out ${model} ${version}?`,
    lines: [
      `To the devices carrying ${where}: ${found.length} now${found.length ? ` (${names})` : ""}.`,
      `Canaries first (${Math.round(choice.share * 100)} %, at least one); the rest once every canary runs it.`,
      "A canary that fails halts it; the others keep the version they run.",
    ],
    confirm: "Start roll-out",
    send: () => api("/api/v1/rollouts", {
      method: "POST",
      body: { model, version, selector: choice.selector, canary_share: choice.share },
    }),
    done: (out) => `Roll-out #${out.id} of ${released(out)} started (recorded in the audit log)`,
  }).then((out) => out && changed("rollout"));
}
