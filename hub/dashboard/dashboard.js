// Outpost fleet dashboard. Plain browser JavaScript, no build step.
//
// The token lives in sessionStorage (this tab only) and travels in the Authorization
// header of every request, never in a URL. Live data comes from GET /api/v1/stream
// (Server-Sent Events), read with fetch() because EventSource cannot send headers.
"use strict";

(() => {
  const TOKEN_KEY = "outpost.token";
  const HISTORY_S = 15 * 60; // what the charts keep, client-side
  const CERT_WARN_S = 14 * 86400;
  const RECENT = 15; // records shown per stream in the device view

  const $ = (id) => document.getElementById(id);
  let controller = null; // aborts the stream on sign-out
  let selected = null; // device id shown in the device view
  let lastSnapshot = null;
  let driftAvailable = true;
  let lastDriftRead = 0;

  class AuthError extends Error {}

  // ------------------------------------------------------------------ helpers

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "class") node.className = value;
      else if (key === "title") node.title = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function pill(text, kind) {
    return el("span", { class: `pill ${kind || text}` }, text);
  }

  function ago(ts, now) {
    if (!ts) return "never";
    const s = Math.max(0, now - ts);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function when(ts) {
    return ts ? new Date(ts * 1000).toLocaleString() : "–";
  }

  function clock(ts) {
    return ts ? new Date(ts * 1000).toLocaleTimeString() : "–";
  }

  function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  function bar(percent) {
    const fill = el("i");
    fill.style.width = `${Math.max(0, Math.min(100, percent || 0))}%`;
    return el("span", { class: "bar" }, fill);
  }

  async function api(path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      cache: "no-store",
    });
    if (response.status === 401) throw new AuthError(await problem(response));
    return response;
  }

  async function problem(response) {
    try {
      const body = await response.json();
      return body.error.message;
    } catch {
      return `HTTP ${response.status}`;
    }
  }

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.className = `status ${kind || ""}`;
  }

  // ------------------------------------------------------------------ sign-in

  function showSignIn(message) {
    if (controller) controller.abort();
    controller = null;
    sessionStorage.removeItem(TOKEN_KEY);
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
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    charts.ensure();
    follow();
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

  // ------------------------------------------------------------------ live stream

  async function follow() {
    if (controller) controller.abort();
    const mine = new AbortController();
    controller = mine;
    let failures = 0;
    while (controller === mine) {
      try {
        await readStream(mine.signal);
        failures = 0; // the hub ended the stream on purpose: reconnect at once
      } catch (error) {
        if (mine.signal.aborted) return;
        if (error instanceof AuthError) {
          showSignIn(`Signed out: ${error.message}`);
          return;
        }
        failures += 1;
        setStatus(`reconnecting (${error.message || error})`, "retrying");
      }
      // Capped, jittered back-off: a restarting hub is not stormed by every open page.
      const delay = failures ? Math.random() * Math.min(10000, 500 * 2 ** failures) : 200;
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  async function readStream(signal) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const response = await fetch("/api/v1/stream", {
      headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
      cache: "no-store",
      signal,
    });
    if (response.status === 401) throw new AuthError(await problem(response));
    if (!response.ok) throw new Error(await problem(response));
    setStatus("live", "live");
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
        if (message.event === "snapshot" && message.data) {
          onSnapshot(JSON.parse(message.data));
        }
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

  // ------------------------------------------------------------------ snapshot

  function onSnapshot(snap) {
    lastSnapshot = snap;
    setStatus(`live · ${clock(snap.at)}`, "live");
    renderTiles(snap);
    renderFleet(snap);
    renderRollouts(snap);
    charts.add(snap);
    if (selected) renderDeviceFacts(snap);
    if (snap.at - lastDriftRead > 10) {
      lastDriftRead = snap.at;
      readDrift();
    }
  }

  function renderTiles(snap) {
    const s = snap.tasks.states;
    // Of the enrolled devices that may connect: revoked ones have a tile of their own.
    $("t-online").textContent = `${snap.fleet.online} / ${snap.fleet.online + snap.fleet.offline}`;
    $("t-revoked").textContent = snap.fleet.revoked;
    $("t-queued").textContent = s.queued;
    $("t-running").textContent = s.assigned + s.accepted + s.running;
    $("t-rate").textContent = charts.lastRate === null ? "–" : charts.lastRate.toFixed(1);
    $("t-policy").textContent = snap.devices.filter(
      (d) => d.policy && d.policy.published > d.policy.applied
    ).length;
    $("t-certs").textContent = snap.devices.filter(
      (d) => !d.revoked && d.certificate.not_after && d.certificate.not_after - snap.at < CERT_WARN_S
    ).length;
  }

  function deviceState(d) {
    if (d.revoked) return "revoked";
    return d.online ? "online" : "offline";
  }

  function renderFleet(snap) {
    const rows = snap.devices.map((d) => {
      const labels = Object.entries(d.labels)
        .filter(([k]) => k !== "site")
        .map(([k, v]) => `${k}=${v}`)
        .join(", ");
      const models = d.models.length
        ? d.models.map((m) =>
            el("div", { class: m.state === "ready" ? "" : "bad", title: m.error || m.sha256 },
              `${m.name} ${m.version}${m.state === "ready" ? "" : ` (${m.state})`}`))
        : el("span", { class: "muted" }, "none");
      const p = d.policy;
      const policy = !p
        ? el("span", { class: "muted" }, "none")
        : el("span", { class: p.published > p.applied ? "warn" : "",
            title: `published v${p.published}, applied v${p.applied}` +
              (p.rejected ? `, refused v${p.rejected}` : "") },
          `v${p.applied}` + (p.published > p.applied ? ` (v${p.published} pending)` : ""));
      const load = d.load || {};
      const loadCell = d.load && "cpu_percent" in load
        ? [el("div", {}, bar(load.cpu_percent), `cpu ${Math.round(load.cpu_percent)} %`),
           el("div", {}, bar(load.memory_percent), `mem ${Math.round(load.memory_percent)} %`)]
        : el("span", { class: "muted" }, "–");
      const notAfter = d.certificate.not_after;
      const left = notAfter ? notAfter - snap.at : null;
      const cert = el("span", {
        class: left !== null && left < CERT_WARN_S ? "bad" : "",
        title: notAfter ? `serial ${d.certificate.serial}, valid until ${when(notAfter)}` : "",
      }, notAfter ? `${new Date(notAfter * 1000).toLocaleDateString()} (${Math.round(left / 86400)} d)` : "–");
      const state = deviceState(d);
      return el("tr", { "data-device": d.id, class: d.id === selected ? "selected" : "" },
        el("td", {}, el("code", {}, d.id)),
        el("td", { class: "state" }, pill(state)),
        el("td", {}, d.labels.site || "–"),
        el("td", {}, labels || "–"),
        el("td", {}, d.profile),
        el("td", {}, models),
        el("td", {}, policy),
        el("td", {}, loadCell),
        el("td", {}, storeFill(d.store)),
        el("td", { title: when(d.last_seen) }, ago(d.last_seen, snap.at)),
        el("td", {}, cert));
    });
    $("fleet").tBodies[0].replaceChildren(...rows);
    const { total, shown } = snap.fleet;
    $("fleet-count").textContent = shown < total ? `(first ${shown} of ${total})` : `(${total})`;
  }

  // Records and bytes waiting to upload; with the fullest stream's fill against its
  // bounds when the agent reports it (over 80 % shown as a warning).
  function storeFill(store) {
    if (!store || !store.streams) return el("span", { class: "muted" }, "–");
    let records = 0;
    let size = 0;
    let fullest = null;
    const lines = [];
    for (const [name, s] of Object.entries(store.streams)) {
      records += s.records;
      size += s.bytes;
      if (typeof s.fill === "number") fullest = Math.max(fullest || 0, s.fill);
      lines.push(`${name}: ${s.records} records, ${bytes(s.bytes)}` +
        (typeof s.fill === "number" ? `, ${(s.fill * 100).toFixed(1)} % full` : ""));
    }
    const text = `${records} rec, ${bytes(size)}`;
    if (fullest === null) return el("span", { title: lines.join("\n") }, text);
    return el("span", { title: lines.join("\n"), class: fullest > 0.8 ? "bad" : "" },
      el("div", {}, bar(fullest * 100), `${Math.round(fullest * 100)} %`), el("div", {}, text));
  }

  $("fleet").tBodies[0].addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-device]");
    if (row) openDevice(row.getAttribute("data-device"));
  });

  function renderRollouts(snap) {
    const box = $("rollouts");
    if (!snap.rollouts.length) {
      box.replaceChildren(el("p", { class: "muted" }, "No roll-outs."));
      return;
    }
    box.replaceChildren(...snap.rollouts.map((r) => {
      const total = r.devices.length || 1;
      const progress = el("div", { class: "progress", title: JSON.stringify(r.counts) },
        ...Object.entries(r.counts).map(([state, n]) => {
          const part = el("span", { class: state, title: `${state}: ${n}` });
          part.style.flex = String(n / total);
          return part;
        }));
      return el("div", { class: "rollout" },
        el("div", {}, el("strong", {}, `#${r.id} ${r.model} ${r.version} `), pill(r.state),
          " ", el("span", { class: "muted" },
            `${Object.entries(r.counts).map(([s, n]) => `${n} ${s}`).join(", ")} · ` +
            `${r.reason || ""} started ${when(r.created_at)} by ${r.created_by}`)),
        progress,
        el("ul", {}, ...r.devices.map((d) =>
          el("li", { title: d.detail || "" }, el("code", {}, d.device), " ", d.stage, " ", pill(d.state)))));
    }));
  }

  async function readDrift() {
    if (!driftAvailable) return;
    try {
      const response = await api("/api/v1/drift");
      if (response.status === 404 || response.status === 405) {
        driftAvailable = false; // this hub has no drift report
        return;
      }
      if (!response.ok) return;
      renderDrift(await response.json());
    } catch (error) {
      if (error instanceof AuthError) showSignIn(`Signed out: ${error.message}`);
    }
  }

  // GET /api/v1/drift: per model version, each device's PSI against the rest of the fleet.
  function renderDrift(body) {
    $("drift-section").hidden = false;
    const rows = (body.items || []).flatMap((v) =>
      (v.devices || []).map((d) => ({ model: v.model, version: v.version, ...d })));
    if (!rows.length) {
      $("drift").replaceChildren(el("p", { class: "muted" },
        "No drift data yet (devices report model statistics in their metrics roll-ups)."));
      return;
    }
    rows.sort((a, b) => Number(b.flagged) - Number(a.flagged) || a.model.localeCompare(b.model));
    const psi = (x) => (x === null || x === undefined ? "–" : x.toFixed(3));
    const head = el("tr", {}, ...["model", "version", "device", "inferences", "PSI labels",
      "PSI confidence", "level"].map((k) => el("th", {}, k)));
    const body_ = rows.slice(0, 200).map((r) =>
      el("tr", { class: r.flagged ? "bad" : "" },
        el("td", {}, r.model), el("td", {}, r.version), el("td", {}, el("code", {}, r.device_id)),
        el("td", {}, r.count), el("td", {}, psi(r.psi_labels)), el("td", {}, psi(r.psi_confidence)),
        el("td", {}, r.flagged ? pill("drift", "failed") : r.level)));
    $("drift").replaceChildren(
      el("p", { class: "muted" }, `Population stability index over the last ${Math.round(body.window_s / 60)} min; ` +
        `flagged from ${body.threshold}.`),
      el("table", { class: "grid small" }, el("thead", {}, head), el("tbody", {}, ...body_)));
  }

  // ------------------------------------------------------------------ device view

  async function openDevice(id) {
    selected = id;
    $("device").hidden = false;
    $("device-title").textContent = `Device ${id}`;
    if (lastSnapshot) renderDeviceFacts(lastSnapshot);
    for (const row of $("fleet").tBodies[0].rows) {
      row.classList.toggle("selected", row.getAttribute("data-device") === id);
    }
    $("device").scrollIntoView({ behavior: "smooth", block: "start" });
    try {
      const enc = encodeURIComponent(id);
      const streams = await api(`/api/v1/devices/${enc}/streams`);
      if (!streams.ok) throw new Error(await problem(streams));
      const marks = new Map((await streams.json()).items.map((s) => [s.stream, s.hwm]));
      const [results, events, metrics] = await Promise.all(
        ["results", "events", "metrics"].map((s) =>
          recent(enc, s, marks.get(s) || 0, s === "metrics" ? 240 : RECENT)));
      if (selected !== id) return;
      renderResults(results);
      renderEvents(events);
      charts.device(metrics);
    } catch (error) {
      if (error instanceof AuthError) showSignIn(`Signed out: ${error.message}`);
      else $("device-title").textContent = `Device ${id} (${error.message})`;
    }
  }

  $("device-close").addEventListener("click", () => {
    selected = null;
    $("device").hidden = true;
    for (const row of $("fleet").tBodies[0].rows) row.classList.remove("selected");
  });

  // The newest `count` records of a stream: a page after its high-water mark less `count`.
  async function recent(enc, stream, hwm, count) {
    if (!hwm) return [];
    const after = Math.max(0, hwm - count);
    const page = await api(`/api/v1/devices/${enc}/records?stream=${stream}&after=${after}&limit=${Math.min(count, 500)}`);
    if (!page.ok) throw new Error(await problem(page));
    return (await page.json()).items.reverse(); // newest first
  }

  function renderDeviceFacts(snap) {
    const d = snap.devices.find((x) => x.id === selected);
    if (!d) return;
    const facts = [
      ["state", pill(deviceState(d))], ["profile", d.profile],
      ["agent", d.agent_version || "–"], ["runtime", d.runtime || "–"],
      ["labels", Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "–"],
      ["task slots", d.task_slots], ["task latency", d.task_latency_ms ? `${d.task_latency_ms.toFixed(1)} ms` : "–"],
      ["last heartbeat", `${ago(d.last_heartbeat, snap.at)} (every ${d.heartbeat_interval || "?"} s)`],
      ["enrolled", when(d.enrolled_at)], ["certificate", `until ${when(d.certificate.not_after)}`],
      ["policy", d.policy ? `applied v${d.policy.applied}, published v${d.policy.published}` : "none"],
      ["temperature", d.load && d.load.temperature_c != null ? `${d.load.temperature_c} °C` : "–"],
    ];
    if (d.revoked) facts.splice(1, 0, ["revoked", `${when(d.revoked_at)} by ${d.revoked_by || "(not recorded)"}`]);
    $("device-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function renderResults(records) {
    $("device-results").tBodies[0].replaceChildren(...(records.length ? records.map((r) => {
      const b = r.body || {};
      const outcome = b.status === "failed" ? `failed: ${b.error || ""}`
        : b.label !== undefined ? `${b.label} (${(+b.confidence || 0).toFixed(2)})` : summary(b);
      return el("tr", {}, el("td", {}, r.seq), el("td", {}, clock(r.ts)),
        el("td", {}, b.model ? `${b.model} ${b.version || ""}` : "–"), el("td", {}, outcome),
        el("td", {}, b.latency_ms !== undefined ? `${b.latency_ms} ms` : "–"));
    }) : [el("tr", {}, el("td", { colSpan: 5, class: "muted" }, "none"))]));
  }

  function renderEvents(records) {
    $("device-events").tBodies[0].replaceChildren(...(records.length ? records.map((r) =>
      el("tr", {}, el("td", {}, r.seq), el("td", {}, clock(r.ts)), el("td", {}, summary(r.body))))
      : [el("tr", {}, el("td", { colSpan: 3, class: "muted" }, "none"))]));
  }

  function summary(body) {
    if (body === null || typeof body !== "object") return String(body);
    const name = body.event || body.kind || body.type || "";
    const rest = Object.entries(body).filter(([k]) => !["event", "kind", "type"].includes(k))
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
    return `${name} ${rest}`.trim().slice(0, 200);
  }

  // ------------------------------------------------------------------ charts

  const charts = (() => {
    const series = { t: [], online: [], total: [], rate: [], latency: [] };
    const perModel = new Map(); // model -> values aligned with series.t
    const made = {};
    const lastTicks = []; // the last SMOOTH snapshots' windows and counts
    const SMOOTH = 5;
    let models = [];

    function size(box) {
      const width = Math.max(200, box.clientWidth || box.parentElement.clientWidth - 16);
      return { width, height: 150 };
    }

    // Counts and rates start at zero; counts of devices step by whole numbers.
    const fromZero = (u, min, max) => [0, max > 0 ? max * 1.15 : 1];
    const whole = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

    function make(id, lines, data, counts = false) {
      const box = $(id);
      if (made[id]) made[id].destroy();
      const colors = ["#5b8def", "#9aa5b1", "#e8710a", "#1e8e3e", "#a142f4", "#d93025"];
      made[id] = new uPlot({
        ...size(box),
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: fromZero } },
        axes: [{ size: 30 }, counts ? { size: 44, incrs: whole } : { size: 44 }],
        series: [{}, ...lines.map((label, i) => ({
          label, stroke: colors[i % colors.length], width: 1.5, spanGaps: true,
        }))],
      }, data, box);
    }

    function ensure() {
      if (typeof uPlot === "undefined" || made["c-online"]) return;
      make("c-online", ["online", "enrolled"], [series.t, series.online, series.total], true);
      make("c-rate", ["ended / s"], [series.t, series.rate]);
      make("c-latency", ["mean ms"], [series.t, series.latency]);
      make("c-models", models.length ? models : ["(no results yet)"],
        [series.t, ...(models.length ? models.map((m) => perModel.get(m)) : [series.t.map(() => null)])]);
    }

    const self = { lastRate: null, ensure };

    self.add = (snap) => {
      let ended = 0;
      let latencySum = 0;
      let latencyN = 0;
      const tick = new Map();
      for (const f of snap.tasks.finished) {
        const n = Object.values(f.states).reduce((a, b) => a + b, 0);
        ended += n;
        tick.set(f.model, n);
        const ok = f.states.succeeded || 0;
        if (f.latency_ms !== null && ok) {
          latencySum += f.latency_ms * ok;
          latencyN += ok;
        }
      }
      // Rates over the last few snapshots: work arrives in bursts, a tick is too short.
      lastTicks.push({ w: snap.tasks.window_s, ended, tick });
      if (lastTicks.length > SMOOTH) lastTicks.shift();
      const w = lastTicks.reduce((a, r) => a + r.w, 0);
      const perModelRate = (model) => lastTicks.reduce((a, r) => a + (r.tick.get(model) || 0), 0) / w;
      self.lastRate = w > 0 ? lastTicks.reduce((a, r) => a + r.ended, 0) / w : null;
      series.t.push(snap.at);
      series.online.push(snap.fleet.online);
      series.total.push(snap.fleet.online + snap.fleet.offline); // enrolled, not revoked
      series.rate.push(self.lastRate);
      series.latency.push(latencyN ? latencySum / latencyN : null);
      let changed = false;
      for (const model of tick.keys()) {
        if (!perModel.has(model)) {
          perModel.set(model, series.t.slice(0, -1).map(() => (0)));
          models = [...perModel.keys()].sort();
          changed = true;
        }
      }
      for (const [model, values] of perModel) {
        values.push(w > 0 ? perModelRate(model) : null);
      }
      while (series.t.length && series.t[0] < snap.at - HISTORY_S) {
        for (const values of [...Object.values(series), ...perModel.values()]) values.shift();
      }
      if (changed && made["c-models"]) {
        made["c-models"].destroy();
        delete made["c-models"];
        make("c-models", models, [series.t, ...models.map((m) => perModel.get(m))]);
      }
      ensure();
      if (!made["c-online"]) return;
      made["c-online"].setData([series.t, series.online, series.total]);
      made["c-rate"].setData([series.t, series.rate]);
      made["c-latency"].setData([series.t, series.latency]);
      made["c-models"].setData(models.length
        ? [series.t, ...models.map((m) => perModel.get(m))]
        : [series.t, series.t.map(() => null)]);
    };

    // Metrics records: chart the load figures they carry (roll-ups keep them under "load").
    self.device = (records) => {
      const fields = ["cpu_percent", "memory_percent", "disk_percent", "temperature_c"];
      const rows = records.slice().reverse().map((r) => ({ ts: r.ts, load: (r.body && (r.body.load || r.body)) || {} }));
      const present = fields.filter((f) => rows.some((r) => typeof r.load[f] === "number"));
      const box = $("c-device");
      if (!present.length) {
        if (made["c-device"]) { made["c-device"].destroy(); delete made["c-device"]; }
        box.replaceChildren(el("p", { class: "muted" }, "No metrics records yet."));
        return;
      }
      box.replaceChildren();
      make("c-device", present, [rows.map((r) => r.ts),
        ...present.map((f) => rows.map((r) => (typeof r.load[f] === "number" ? r.load[f] : null)))]);
    };

    window.addEventListener("resize", () => {
      for (const [id, chart] of Object.entries(made)) chart.setSize(size($(id)));
    });
    return self;
  })();

  // ------------------------------------------------------------------ start

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    signIn(saved).catch((error) => showSignIn(error instanceof AuthError ? `Signed out: ${error.message}` : String(error)));
  } else {
    showSignIn("");
  }
})();
