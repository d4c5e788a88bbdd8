// Explanations in the device view. A flagged result that carried its input (policy
// inference.flagged_inputs) can be explained on the hub by an operator (one
// explanation costs the hub hundreds of model calls): POST /api/v1/explain, the answer
// in a panel under the results. A result the device explained itself
// (inference.explain_flagged) is marked from its explanation event, when that is among
// the events the view read. device.js owns the view and says which device is open.

import { can } from "./actions.js";
import { $, api, bar, el, muted, problem, signOutOn } from "./util.js";

// The open device view: which device, and how to draw its results again.
const view = { device: () => null, redraw: () => {} };

/** Explanations for the device view: `device()` names the open device, `redraw()` draws
 * its results again (their controls follow the panel's state). */
export function showExplanationsOf(device, redraw) {
  view.device = device;
  view.redraw = redraw;
}

/** The seq of the result the panel is about (null when closed). */
export const explainingSeq = () => (explaining ? explaining.seq : null);

let explainedOnDevice = new Map(); // result seq -> its device's explanation event
let explaining = null; // the panel's subject: {device, seq} and pending, answer or error
let explainTurn = 0; // each request's number: an answer to an older one is dropped

/** Keep the device's own explanations among `events` (newest first), by result seq. */
export function noteDeviceExplanations(events) {
  const found = new Map();
  for (const r of events) {
    const b = r.body || {};
    if (b.event === "explanation" && Number.isInteger(b.result_seq) && !found.has(b.result_seq)) {
      found.set(b.result_seq, b);
    }
  }
  explainedOnDevice = found;
}

// Records are read with inputs=false: a carried input shows as its byte count.
const carriesInput = (b) =>
  Boolean(b.flag && b.input && typeof b.input === "object" && (b.input.bytes || b.input.data));

export function whyCell(seq, b) {
  const mark = explainedOnDevice.get(seq);
  const out = [];
  if (mark) {
    out.push(el("div", {
      class: "on-device",
      title: `${mark.label} (${score(mark.score)}) by ${mark.method}, ` +
        `${mark.calls} model calls, on the device`,
    }, `explained on device: ${mark.label}, ${topText(mark)}`));
  }
  if (carriesInput(b)) {
    const allowed = can("operator");
    const pending = Boolean(explaining && explaining.seq === seq && explaining.pending);
    out.push(el("button", {
      type: "button",
      class: "small explain",
      "data-seq": seq,
      disabled: !allowed || pending,
      title: allowed
        ? "Explain this answer on the hub: which part of its input it rests on"
        : "Explaining needs the operator role (it runs the model on the hub); you are a viewer",
    }, pending ? "Explaining…" : "Explain"));
  } else if (b.flag && !mark) {
    out.push(el("span", {
      class: "muted",
      title: "This result carries no input to explain: the device keeps inputs unless its " +
        "policy sets inference.flagged_inputs",
    }, "–"));
  }
  return out;
}

/** The best part of an explanation, in words: its top patch, window or feature. */
function topText(x) {
  const top = x.top || {};
  if (top.row !== undefined) return `top patch row ${top.row} col ${top.col}`;
  if (Array.isArray(x.channels)) {
    return `channel shares ${x.channels.map((s, i) => `${i}: ${percent(s)}`).join(", ")}`;
  }
  if (top.feature !== undefined) return `top feature ${top.feature}`;
  return "";
}

/** A device's explanation event in one line, for its events table. */
export function explanationLine(body) {
  return `explanation of result ${body.result_seq}: ${body.label} (${score(body.score)}), ` +
    `${body.method}, ${body.calls} calls, ${topText(body)}`;
}

const score = (value) => (typeof value === "number" ? value.toFixed(3) : "?");
const percent = (share) => `${Math.round((+share || 0) * 100)} %`;

$("device-results").tBodies[0].addEventListener("click", (event) => {
  const button = event.target.closest("button.explain");
  if (button && !button.disabled) explain(Number(button.getAttribute("data-seq")));
});

async function explain(seq) {
  const id = view.device();
  const turn = ++explainTurn;
  explaining = { device: id, seq, pending: true };
  showExplanation();
  let outcome;
  try {
    const response = await api("/api/v1/explain", { method: "POST", body: { device: id, seq } });
    outcome = response.ok ? { answer: await response.json() }
      : { error: `${await problem(response)} (HTTP ${response.status})` };
  } catch (error) {
    if (signOutOn(error)) return;
    outcome = { error: `not sent: ${error.message || error}` };
  }
  if (turn !== explainTurn || view.device() !== id) return; // another one asked since
  explaining = { device: id, seq, ...outcome };
  showExplanation();
}

export function forgetExplanation() {
  explainTurn += 1;
  explaining = null;
  showExplanation();
}

/** Draw the panel and the results' controls for the current `explaining`. */
function showExplanation() {
  const box = $("device-explain");
  view.redraw();
  if (!explaining) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  const { seq, pending, answer, error } = explaining;
  const close = el("button", { type: "button", class: "small", onclick: forgetExplanation },
    "Close");
  const head = el("div", { class: "explain-head" },
    el("h4", {}, `Explanation of result ${seq}`), close);
  const body = pending ? [muted("explaining on the hub…")]
    : error ? [el("p", { class: "error", role: "alert" }, `Not explained: ${error}`)]
      : explanation(seq, answer);
  box.replaceChildren(head, ...body);
  box.hidden = false;
}

function explanation(seq, a) {
  const top = a.top || {};
  const facts = [
    ["label", el("strong", {}, a.label)], ["score", score(a.score)],
    ["model", `${a.model} ${a.version}`], ["method", `${a.method}, ${a.calls} model calls`],
  ];
  if (a.patch !== undefined) {
    facts.push(["patch", `${a.patch} px, stride ${a.stride}`],
      ["top patch", `row ${top.row}, col ${top.col} (${top.size} px)`]);
  }
  if (a.window !== undefined) {
    facts.push(["window", `${a.window} samples`],
      ["top", `window ${top.window}, channel ${top.channel}`]);
  }
  if (top.feature !== undefined) facts.push(["top feature", top.feature]);
  const out = [];
  if (a.png) {
    out.push(el("img", {
      class: "heat",
      src: `data:image/png;base64,${a.png}`,
      alt: `the input of result ${seq} in gray, what ${a.label} rests on in red`,
    }));
  }
  out.push(el("dl", { class: "facts explain-facts" },
    ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
  if (Array.isArray(a.channels)) {
    out.push(el("table", { class: "grid small channels" },
      el("thead", {}, el("tr", {}, el("th", {}, "channel"), el("th", {}, "share"))),
      el("tbody", {}, ...a.channels.map((share, i) => el("tr", { "data-channel": i },
        el("td", {}, i), el("td", {}, bar(share * 100), percent(share)))))));
  }
  return out;
}
