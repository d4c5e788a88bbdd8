// The live stream: GET /api/v1/stream (Server-Sent Events), read with fetch() because
// EventSource cannot send the Authorization header (a token in the URL would end up in
// logs). The hub ends each stream after a while and the page reconnects at once; after a
// failure it backs off, capped and jittered.

import { AuthError, TOKEN_KEY, problem } from "./util.js";

let controller = null; // the running follow's, so `stop` can end it

/** Read snapshots until `stop`; `on.snapshot(snap)`, `on.status(text, kind)` and
 * `on.refused(message)` (the token was refused; following ends) report. */
export async function follow(on) {
  stop();
  const mine = new AbortController();
  controller = mine;
  let failures = 0;
  while (controller === mine) {
    try {
      await readStream(mine.signal, on);
      failures = 0; // the hub ended the stream on purpose: reconnect at once
    } catch (error) {
      if (mine.signal.aborted) return;
      if (error instanceof AuthError) {
        on.refused(error.message);
        return;
      }
      failures += 1;
      on.status(`reconnecting (${error.message || error})`, "retrying");
    }
    // Capped, jittered back-off: a restarting hub is not stormed by every open page.
    const delay = failures ? Math.random() * Math.min(10000, 500 * 2 ** failures) : 200;
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

export function stop() {
  if (controller) controller.abort();
  controller = null;
}

async function readStream(signal, on) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch("/api/v1/stream", {
    headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
    cache: "no-store",
    signal,
  });
  if (response.status === 401) throw new AuthError(await problem(response));
  if (!response.ok) throw new Error(await problem(response));
  on.status("live", "live");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = parseFrame(frame);
      if (message.event === "snapshot" && message.data) on.snapshot(JSON.parse(message.data));
    }
  }
}

// One SSE frame: "field: value" lines; data lines join with newlines; ":" comments.
function parseFrame(frame) {
  const message = { event: "message", data: "" };
  const data = [];
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") message.event = value;
    else if (field === "data") data.push(value);
  }
  message.data = data.join("\n");
  return message;
}
