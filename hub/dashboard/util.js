// Helpers every part of the dashboard uses: building DOM nodes, formatting times and
// sizes, and calling the hub's API with the tab's token.

export const TOKEN_KEY = "outpost.token";

export const $ = (id) => document.getElementById(id);

/** The hub refused the token: the page signs out (dashboard.js listens for it). */
export class AuthError extends Error {}

/** The API answered with an error; `status` is its HTTP status. */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function pill(text, kind) {
  return el("span", { class: `pill ${kind || text}` }, text);
}

export function muted(text) {
  return el("span", { class: "muted" }, text);
}

export function ago(ts, now) {
  if (!ts) return "never";
  const s = Math.max(0, now - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "–";
}

export function clock(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "–";
}

/** A time of day, with the date when it is not today's. */
export function stamp(ts) {
  if (!ts) return "–";
  const date = new Date(ts * 1000);
  return date.toDateString() === new Date().toDateString()
    ? date.toLocaleTimeString()
    : date.toLocaleString();
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function bar(percent) {
  const fill = el("i");
  fill.style.width = `${Math.max(0, Math.min(100, percent || 0))}%`;
  return el("span", { class: "bar" }, fill);
}

/** "key=value" pairs, in key order. */
export function pairs(labels, skip = []) {
  return Object.entries(labels || {})
    .filter(([k]) => !skip.includes(k))
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`);
}

/** Parse "key=value" items, split by new lines, or by commas that start a next "key=":
 * a value may hold a comma ("k=a,b" is one label). Throws naming a bad item. */
export function parsePairs(text) {
  const out = {};
  const items = text.split(/\n|,(?=\s*[A-Za-z0-9][A-Za-z0-9_.-]*\s*=)/);
  for (const item of items.map((s) => s.trim()).filter(Boolean)) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw new Error(`"${item}" is not key=value`);
    out[item.slice(0, eq).trim()] = item.slice(eq + 1).trim();
  }
  return out;
}

/** Call the API with the tab's token; a JSON `body` is sent as JSON. */
export async function api(path, { method = "GET", body } = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (response.status === 401) throw new AuthError(await problem(response));
  return response;
}

/** GET `path` as JSON; ApiError with the hub's message when it answers an error. */
export async function read(path) {
  const response = await api(path);
  if (!response.ok) throw new ApiError(await problem(response), response.status);
  return response.json();
}

export async function problem(response) {
  try {
    const body = await response.json();
    return body.error.message;
  } catch {
    return `HTTP ${response.status}`;
  }
}

/** Hand a refused token to the sign-out handler; true if `error` was one. */
export function signOutOn(error) {
  if (!(error instanceof AuthError)) return false;
  window.dispatchEvent(new CustomEvent("outpost:signed-out", { detail: error.message }));
  return true;
}

/** Run `task` one at a time: a call during a run asks for one more run after it (so a
 * slow answer never piles up requests, and a change made meanwhile is still read). */
export function singleFlight(task) {
  let running = null;
  let again = false;
  return () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await task();
        } while (again);
      } finally {
        running = null;
      }
    })();
    return running;
  };
}
