// bufbroker dashboard: plain JS and SVG, no dependencies, nothing from the internet.
// It draws GET /v1/overview, redraws when GET /v1/events (SSE) reports a change,
// and polls GET /v1/stats once a second for the live charts.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const EVENT_KINDS = [
  "session-opened", "session-ended", "registered", "unregistered", "revoked", "moved",
  "attached", "detached", "mapped", "unmapped", "negotiated",
];
const GRAPH_LIMIT = 200;      // buffers drawn in the graph and tables
const CHART_POINTS = 60;      // one a second
const NODE_W = 230, NODE_H = 42, GAP = 14, TOP = 34;
const COLUMNS = { exporter: 10, buffer: 330, importer: 720 };

const state = { overview: null, selected: null, refreshTimer: null, samples: { rate: [], fds: [] }, lastStats: null };

// --- small DOM helpers (text only through textContent: nothing is parsed as HTML) ---

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    throw new Error(response.status + ": " + detail);
  }
  return body;
}

// --- data ---

async function refresh() {
  state.refreshTimer = null;
  try {
    state.overview = await getJSON("/v1/overview?limit=" + GRAPH_LIMIT);
  } catch (error) {
    document.getElementById("counts").textContent = "cannot read the broker: " + error.message;
    return;
  }
  render();
}

function scheduleRefresh() {
  if (state.refreshTimer === null) state.refreshTimer = setTimeout(refresh, 80);
}

function render() {
  const o = state.overview;
  document.getElementById("version").textContent = "v" + o.stats.version + " · pid " + o.stats.pid;
  document.getElementById("counts").textContent =
    o.stats.sessions + " sessions · " + o.stats.buffers + " buffers · " + o.stats.attachments +
    " attachments · " + o.stats.mappings + " mappings · " + o.stats.fds_held + " fds held";
  renderGraph(o);
  renderSessions(o.sessions);
  renderBuffers(o);
  renderSelectedTrace();
}

// --- the graph: exporters → buffers → importers ---

function renderGraph(o) {
  const graph = document.getElementById("graph");
  clear(graph);
  const sessions = new Map(o.sessions.map((s) => [s.id, s]));
  const exporters = [], importers = [];
  const exporterRow = new Map(), importerRow = new Map(), bufferRow = new Map();
  o.buffers.forEach((b, i) => {
    bufferRow.set(b.id, i);
    if (!exporterRow.has(b.exporter_session_id)) {
      exporterRow.set(b.exporter_session_id, exporters.length);
      exporters.push({ id: b.exporter_session_id, pid: b.exporter_pid, gone: b.exporter_gone || !sessions.has(b.exporter_session_id) });
    }
  });
  for (const a of o.attachments) {
    if (!importerRow.has(a.session_id)) {
      importerRow.set(a.session_id, importers.length);
      importers.push({ id: a.session_id, pid: a.importer_pid });
    }
  }
  const rows = Math.max(exporters.length, o.buffers.length, importers.length, 1);
  const height = TOP + rows * (NODE_H + GAP) + 10;
  graph.setAttribute("viewBox", "0 0 960 " + height);
  graph.setAttribute("height", String(height));
  const y = (row) => TOP + row * (NODE_H + GAP);

  graph.appendChild(svg("text", { x: COLUMNS.exporter, y: 18, class: "column-title" }, "exporters"));
  graph.appendChild(svg("text", { x: COLUMNS.buffer, y: 18, class: "column-title" }, "buffers"));
  graph.appendChild(svg("text", { x: COLUMNS.importer, y: 18, class: "column-title" }, "importers"));
  if (!o.buffers.length) {
    graph.appendChild(svg("text", { x: COLUMNS.buffer, y: TOP + 20, class: "sub" }, "no buffers registered"));
  }

  const edges = svg("g", { class: "edges" });
  const nodes = svg("g", { class: "nodes" });
  graph.appendChild(edges);
  graph.appendChild(nodes);

  for (const b of o.buffers) {
    const from = exporterRow.get(b.exporter_session_id);
    edges.appendChild(svg("path", {
      class: "edge export", "data-buffer-id": b.id,
      d: curve(COLUMNS.exporter + NODE_W, y(from) + NODE_H / 2, COLUMNS.buffer, y(bufferRow.get(b.id)) + NODE_H / 2),
    }));
  }
  const seenPairs = new Map();
  for (const a of o.attachments) {
    if (!bufferRow.has(a.buffer_id)) continue;
    const key = a.buffer_id + ":" + a.session_id;
    const nth = seenPairs.get(key) || 0;
    seenPairs.set(key, nth + 1);
    const x1 = COLUMNS.buffer + NODE_W, y1 = y(bufferRow.get(a.buffer_id)) + NODE_H / 2;
    const x2 = COLUMNS.importer, y2 = y(importerRow.get(a.session_id)) + NODE_H / 2;
    const classes = ["attachment"];
    if (a.non_compliant) classes.push("non-compliant");
    if (state.selected === a.id) classes.push("selected");
    const group = svg("g", { class: classes.join(" "), "data-attachment-id": a.id, tabindex: 0, role: "button" });
    const d = curve(x1, y1, x2, y2);
    group.appendChild(svg("path", { class: "hit", d }));
    group.appendChild(svg("path", { class: "edge", d }));
    const label = a.map_type + (a.pinned ? " (pinned)" : "") + (a.mappings ? " · " + a.mappings + " mapped" : "");
    group.appendChild(svg("text", { class: "edge-label", x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 5 + nth * 14, "text-anchor": "middle" }, label));
    group.appendChild(svg("title", {}, "attachment " + a.id + ": click for its negotiation trace"));
    group.addEventListener("click", () => selectAttachment(a.id));
    group.addEventListener("keydown", (event) => { if (event.key === "Enter") selectAttachment(a.id); });
    edges.appendChild(group);
  }

  exporters.forEach((e, row) => {
    const sub = e.gone ? "exporter gone" : "session " + e.id;
    nodes.appendChild(node("exporter", COLUMNS.exporter, y(row), "pid " + e.pid, sub, { "data-session-id": e.id }));
  });
  for (const b of o.buffers) {
    const title = b.name || "buffer #" + b.id;
    const sub = "#" + b.id + " · " + bytes(b.size) + " · " + b.offer_types.join(",") + (b.state === "revoked" ? " · revoked" : "");
    nodes.appendChild(node("buffer" + (b.state === "revoked" ? " revoked" : ""), COLUMNS.buffer, y(bufferRow.get(b.id)), title, sub, { "data-buffer-id": b.id }));
  }
  importers.forEach((i, row) => {
    const s = sessions.get(i.id);
    const sub = "session " + i.id + (s && s.non_compliant ? " · non-compliant" : "");
    nodes.appendChild(node("importer", COLUMNS.importer, y(row), "pid " + i.pid, sub, { "data-session-id": i.id }));
  });
}

function node(kind, x, y, title, sub, attrs) {
  const group = svg("g", Object.assign({ class: "node " + kind }, attrs));
  group.appendChild(svg("rect", { x, y, width: NODE_W, height: NODE_H, rx: 5 }));
  group.appendChild(svg("text", { x: x + 8, y: y + 17, class: "title" }, title));
  group.appendChild(svg("text", { x: x + 8, y: y + 33, class: "sub" }, sub));
  return group;
}

function curve(x1, y1, x2, y2) {
  const mid = (x1 + x2) / 2;
  return "M" + x1 + "," + y1 + " C" + mid + "," + y1 + " " + mid + "," + y2 + " " + x2 + "," + y2;
}

// --- traces ---

function selectAttachment(id) {
  state.selected = id;
  for (const g of document.querySelectorAll("#graph .attachment")) {
    g.classList.toggle("selected", Number(g.getAttribute("data-attachment-id")) === id);
  }
  renderSelectedTrace();
}

function renderSelectedTrace() {
  if (state.selected === null || !state.overview) return;
  const box = document.getElementById("trace");
  const a = state.overview.attachments.find((x) => x.id === state.selected);
  clear(box);
  if (!a) {
    box.appendChild(el("p", { class: "hint" }, "attachment " + state.selected + " is gone (detached)."));
    return;
  }
  const title = "attachment " + a.id + ": pid " + a.importer_pid + " → " + (a.buffer_name || "buffer #" + a.buffer_id);
  box.appendChild(el("p", { class: "summary" }, title + " negotiated " + a.map_type + (a.pinned ? " (compat, pinned)" : "")));
  if (a.invalid) box.appendChild(el("p", { class: "summary fail" }, "invalidated: " + a.invalid));
  box.appendChild(matrixTable(a.matrix, "attachment-" + a.id));
}

function matrixTable(matrix, id) {
  const table = el("table", { class: "matrix", id: "matrix-" + id });
  const head = el("tr");
  head.appendChild(el("th", {}, "offers ↓ / matches →"));
  matrix.matches.forEach((m, j) => head.appendChild(el("th", { scope: "col" }, j + ": " + m)));
  table.appendChild(el("thead")).appendChild(head);
  const body = el("tbody");
  matrix.offers.forEach((offer, i) => {
    const row = el("tr");
    row.appendChild(el("th", { scope: "row" }, i + ": " + offer));
    matrix.cells[i].forEach((cell, j) => {
      const chosen = matrix.chosen && matrix.chosen.offer_index === i && matrix.chosen.match_index === j;
      const td = el("td", { class: "cell " + cell.verdict + (chosen ? " chosen" : ""), title: cell.reason || cell.verdict });
      td.appendChild(el("span", { class: "verdict" }, cell.verdict + (cell.converter ? " via " + cell.converter : "")));
      if (cell.reason) td.appendChild(el("span", { class: "reason" }, cell.reason));
      row.appendChild(td);
    });
    body.appendChild(row);
  });
  table.appendChild(body);
  return table;
}

// --- tables ---

function renderSessions(sessions) {
  const body = document.querySelector("#sessions-table tbody");
  clear(body);
  for (const s of sessions) {
    const row = el("tr", { "data-session-id": s.id });
    for (const value of [s.id, s.pid, s.uid, s.gid, s.role, s.buffers, s.attachments, s.mappings, s.fds_held,
      s.non_compliant ? "no" : "yes", s.events_open ? "open" : "-"]) {
      row.appendChild(el("td", {}, value));
    }
    body.appendChild(row);
  }
}

function renderBuffers(o) {
  const body = document.querySelector("#buffers-table tbody");
  clear(body);
  document.getElementById("buffers-total").textContent =
    o.buffers_total > o.buffers.length ? "(first " + o.buffers.length + " of " + o.buffers_total + ")" : "";
  for (const b of o.buffers) {
    const row = el("tr", { "data-buffer-id": b.id, class: b.state });
    const labels = Object.entries(b.labels).map(([k, v]) => k + "=" + v).join(" ");
    for (const value of [b.id, b.name || "-", bytes(b.size), b.state, b.exporter_pid, b.offer_types.join(", "),
      b.attachment_count, b.generation, labels]) {
      row.appendChild(el("td", {}, value));
    }
    row.addEventListener("click", () => { document.getElementById("explain-buffer").value = b.name || String(b.id); });
    body.appendChild(row);
  }
}

// --- explain ---

async function explain(event) {
  event.preventDefault();
  const box = document.getElementById("explain-result");
  clear(box);
  const buffer = document.getElementById("explain-buffer").value.trim();
  const offers = document.getElementById("explain-offers").value.split(",").map((s) => s.trim()).filter(Boolean);
  const request = {
    accept: document.getElementById("explain-accept").value.split(",").map((s) => s.trim()).filter(Boolean),
    access: document.getElementById("explain-access").value,
  };
  if (buffer) {
    if (/^[0-9]+$/.test(buffer)) request.buffer_id = Number(buffer); else request.buffer_name = buffer;
  } else {
    request.offers = offers;
  }
  try {
    const result = await getJSON("/v1/explain", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    const text = result.would_attach ? "an attach would negotiate " + result.map_type : "an attach would fail: " + result.error;
    box.appendChild(el("p", { class: "summary" + (result.would_attach ? "" : " fail") }, text));
    box.appendChild(matrixTable(result.matrix, "explain"));
  } catch (error) {
    box.appendChild(el("p", { class: "summary fail" }, error.message));
  }
}

// --- live charts ---

async function sample() {
  let stats;
  try {
    stats = await getJSON("/v1/stats");
  } catch (error) {
    return;
  }
  const now = performance.now();
  const total = Object.values(stats.negotiations).reduce((a, b) => a + b, 0);
  if (state.lastStats) {
    const seconds = Math.max((now - state.lastStats.at) / 1000, 0.001);
    push(state.samples.rate, Math.max(0, (total - state.lastStats.total) / seconds));
  }
  state.lastStats = { at: now, total };
  push(state.samples.fds, stats.fds_held);
  drawSpark("rate-chart", state.samples.rate);
  drawSpark("fds-chart", state.samples.fds);
  const rate = state.samples.rate.length ? state.samples.rate[state.samples.rate.length - 1] : 0;
  document.getElementById("rate-value").textContent = rate.toFixed(1);
  document.getElementById("fds-value").textContent = String(stats.fds_held);
}

function push(list, value) {
  list.push(value);
  if (list.length > CHART_POINTS) list.shift();
}

function drawSpark(id, values) {
  const chart = document.getElementById(id);
  clear(chart);
  if (!values.length) return;
  const max = Math.max(1, ...values);
  const step = 300 / (CHART_POINTS - 1);
  const offset = CHART_POINTS - values.length;
  const points = values.map((v, i) => ((offset + i) * step).toFixed(1) + "," + (58 - (v / max) * 54).toFixed(1));
  chart.appendChild(svg("polyline", { points: points.join(" ") }));
  chart.appendChild(svg("title", {}, "max " + max.toFixed(1)));
}

// --- events ---

function logEvent(kind, data) {
  const list = document.getElementById("events");
  let text = "#" + data.seq + " " + kind;
  if (data.buffer_id) text += " buffer " + data.buffer_id;
  if (data.attachment_id) text += " attachment " + data.attachment_id;
  if (data.session_id) text += " session " + data.session_id;
  const detail = Object.entries(data.detail || {}).map(([k, v]) => k + "=" + JSON.stringify(v)).join(" ");
  if (detail) text += " · " + detail;
  list.insertBefore(el("li", { "data-kind": kind }, text), list.firstChild);
  while (list.childNodes.length > 100) list.removeChild(list.lastChild);
}

function connectEvents() {
  const live = document.getElementById("live");
  const source = new EventSource("/v1/events");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; scheduleRefresh(); };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  for (const kind of EVENT_KINDS) {
    source.addEventListener(kind, (event) => {
      let data = {};
      try { data = JSON.parse(event.data); } catch (error) { return; }
      logEvent(kind, data);
      if (kind !== "negotiated") scheduleRefresh();
    });
  }
  source.addEventListener("dropped", () => logEvent("dropped", { seq: "-", detail: { why: "this page read too slowly" } }));
}

document.getElementById("explain-form").addEventListener("submit", explain);
refresh();
connectEvents();
sample();
setInterval(sample, 1000);
