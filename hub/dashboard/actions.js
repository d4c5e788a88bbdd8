// The operator's changes: who may make them, the confirmation every one goes through,
// and the notice of what happened. The hub checks the role of every request and audits
// every change; the page only hides what the token's role cannot do.

import { $, el, problem, signOutOn } from "./util.js";

const RANK = { viewer: 0, operator: 1, admin: 2 };
let role = "viewer";

/** Show the controls of `name`'s role (elements with data-role) and hide the others. */
export function setRole(name) {
  role = name in RANK ? name : "viewer";
  for (const node of document.querySelectorAll("[data-role]")) {
    node.hidden = !can(node.getAttribute("data-role"));
  }
}

export function can(needed) {
  return RANK[role] >= RANK[needed];
}

/** Tell the page something changed (the task list, the device view and the audit log
 * read again at once rather than at their next turn). */
export function changed(what) {
  window.dispatchEvent(new CustomEvent("outpost:changed", { detail: what }));
}

let pending = null; // the open confirmation's settle function

/**
 * Ask before a change, then make it. The dialog lists what will happen (`lines`); the
 * change is sent only from its confirm button (labelled `confirm`), and only once `typed`
 * (when given) has been typed. `send(reason)` makes the request; an error answer is
 * shown in the dialog, which stays open. Resolves to the answer's body, or null if the
 * operator cancelled.
 */
export function confirmChange({ title, lines, confirm, danger = false, typed = "", reason = false, send, done }) {
  if (pending) pending(null);
  const dialog = $("confirm");
  const ok = $("confirm-ok");
  const typedInput = $("confirm-typed-input");
  const reasonInput = $("confirm-reason-input");
  $("confirm-title").textContent = title;
  $("confirm-lines").replaceChildren(...lines.map((line) => el("li", {}, line)));
  $("confirm-typed").hidden = !typed;
  $("confirm-typed-word").textContent = typed;
  typedInput.value = "";
  $("confirm-reason").hidden = !reason;
  reasonInput.value = "";
  $("confirm-error").textContent = "";
  ok.textContent = confirm;
  ok.className = danger ? "danger" : "primary";
  ok.disabled = Boolean(typed);
  for (const button of [ok, $("confirm-cancel")]) button.hidden = false;

  return new Promise((resolve) => {
    const settle = (value) => {
      if (pending !== settle) return;
      pending = null;
      ok.onclick = null;
      typedInput.oninput = null;
      if (dialog.open) dialog.close();
      resolve(value);
    };
    pending = settle;
    typedInput.oninput = () => { ok.disabled = typedInput.value.trim() !== typed; };
    ok.onclick = async () => {
      ok.disabled = true;
      $("confirm-error").textContent = "";
      try {
        const response = await send(reasonInput.value.trim());
        if (!response.ok) {
          $("confirm-error").textContent = `Refused: ${await problem(response)}`;
          ok.disabled = Boolean(typed) && typedInput.value.trim() !== typed;
          return;
        }
        const body = await response.json();
        notice(done(body));
        settle(body);
      } catch (error) {
        if (signOutOn(error)) {
          settle(null);
          return;
        }
        $("confirm-error").textContent = `Not sent: ${error.message || error}`;
        ok.disabled = false;
      }
    };
    dialog.showModal();
    (typed ? typedInput : $("confirm-cancel")).focus();
  });
}

$("confirm-cancel").addEventListener("click", () => pending && pending(null));
$("confirm").addEventListener("close", () => pending && pending(null));

let noticeTimer = null;

/** A short message at the foot of the page, read out by screen readers. */
export function notice(text, kind = "ok") {
  const box = $("notice");
  box.textContent = text;
  box.className = `notice ${kind}`;
  box.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { box.hidden = true; }, 10000);
}
