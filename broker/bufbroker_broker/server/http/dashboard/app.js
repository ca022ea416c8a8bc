// bufbroker dashboard: plain JS and SVG, no dependencies, nothing from the internet.
// It draws GET /v1/overview, redraws when GET /v1/events (SSE) reports a change,
// and polls GET /v1/stats once a second for the live charts. Streams come from
// GET /v1/streams, read again on every stream event and once a second (their
// counters are what producers report, twice a second).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const EVENT_KINDS = [
  "session-opened", "session-ended", "registered", "unregistered", "revoked", "moved",
  "attached", "detached", "mapped", "unmapped", "negotiated",
];
const STREAM_KINDS = ["stream-created", "stream-deleted", "stream-linked", "stream-unlinked", "stalled"];
const STREAM_LIMIT = 100;     // streams drawn
const GRAPH_LIMIT = 200;      // buffers drawn in the graph and tables
const CHART_POINTS = 60;      // one a second
const EVENT_LIMIT = 100;      // events kept in the panel
const NODE_W = 220, NODE_H = 42, GAP = 14, TOP = 34;
// Attachment labels: one line each, in a column of their own between buffers and importers.
const LABEL_H = 20, LABEL_STEP = 26, LABEL_MIN_W = 120;
const LANE = 64;              // room for the curves between two columns

const state = {
  overview: null, selected: null, refreshTimer: null, samples: { rate: [], fds: [] }, lastStats: null,
  streams: null, streamsTotal: 0, streamsTimer: null,
  // Per link id: the producer report last used for its fps ({at: seconds on this page's clock, delivered}), and the fps.
  linkSeen: new Map(), linkFps: new Map(),
};

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

// A pid with its session's name beside it, when the session named itself.
function who(pid, name) { return name ? pid + " (" + name + ")" : String(pid); }

function sessionName(id) {
  const s = state.overview && state.overview.sessions.find((x) => x.id === id);
  return s ? s.name || "" : "";
}

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

// --- the graph: exporters → buffers → attachments → importers ---
//
// Every attachment is a label on a line of its own, in the column between
// the buffers and the importers: its edge runs from the buffer to the label
// and on from the label to the importer, so a label always sits on its own
// edge and never on another's. Each buffer gets a block of rows tall enough
// for its labels (the buffer centred beside them); importers and exporters
// are placed as near as they can be to the middle of what they link to.

function edgeLabel(a) {
  return "#" + a.id + " " + a.map_type + (a.pinned ? " (pinned)" : "") + (a.mappings ? " · " + a.mappings + " mapped" : "") +
    (a.invalid ? " · invalid" : "");
}

// Widest of ``texts`` as an edge label would draw it (the graph's own font).
function labelTextWidth(graph, texts) {
  const probe = svg("g", { class: "attachment", visibility: "hidden" });
  const label = probe.appendChild(svg("g", { class: "edge-label" }));
  const text = label.appendChild(svg("text", {}));
  graph.appendChild(probe);
  let widest = 0;
  for (const t of texts) {
    text.textContent = t;
    widest = Math.max(widest, text.getComputedTextLength() || t.length * 7.5);
  }
  graph.removeChild(probe);
  return widest;
}

const mean = (values) => values.reduce((a, b) => a + b, 0) / values.length;

// Tops for nodes in ``order``, each as near its ``desired`` top as it can be,
// none above TOP, none overlapping the next, the last ending by ``bottom`` when they fit.
function place(order, desired, bottom) {
  const tops = [];
  let next = TOP;
  for (const id of order) {
    const top = Math.max(desired.get(id), next);
    tops.push(top);
    next = top + NODE_H + GAP;
  }
  let limit = Math.max(bottom, TOP + order.length * (NODE_H + GAP) - GAP) - NODE_H;
  for (let i = tops.length - 1; i >= 0; i--) {
    tops[i] = Math.min(tops[i], limit);
    limit = tops[i] - NODE_H - GAP;
  }
  return new Map(order.map((id, i) => [id, tops[i]]));
}

function layoutGraph(o, labelW) {
  const sessions = new Map(o.sessions.map((s) => [s.id, s]));
  const bufferIndex = new Map(o.buffers.map((b, i) => [b.id, i]));
  const attachments = o.attachments.filter((a) => bufferIndex.has(a.buffer_id));
  const exporters = new Map(), importers = new Map();
  for (const b of o.buffers) {
    if (!exporters.has(b.exporter_session_id)) {
      exporters.set(b.exporter_session_id, { id: b.exporter_session_id, pid: b.exporter_pid, gone: b.exporter_gone || !sessions.has(b.exporter_session_id), buffers: [] });
    }
    exporters.get(b.exporter_session_id).buffers.push(b.id);
  }
  for (const a of attachments) {
    if (!importers.has(a.session_id)) importers.set(a.session_id, { id: a.session_id, pid: a.importer_pid, attachments: [] });
    importers.get(a.session_id).attachments.push(a);
  }
  const byBuffer = new Map(o.buffers.map((b) => [b.id, []]));
  for (const a of attachments) byBuffer.get(a.buffer_id).push(a);

  // Importers ranked by the mean row of their buffers, then labels stacked in
  // each buffer's block in that rank (fewer crossings); a second round ranks
  // the importers by where their labels landed.
  let rank = new Map([...importers.values()]
    .map((imp, i) => ({ id: imp.id, key: mean(imp.attachments.map((a) => bufferIndex.get(a.buffer_id))), i }))
    .sort((p, q) => p.key - q.key || p.i - q.i).map((x, r) => [x.id, r]));
  const X = { exporter: 10 };
  X.buffer = X.exporter + NODE_W + LANE;
  X.label = X.buffer + NODE_W + LANE;
  X.importer = X.label + labelW + LANE;
  const width = X.importer + NODE_W + 10;
  const bufferTop = new Map(), labelTop = new Map();
  let bottom = TOP;
  const stack = () => {
    let top = TOP;
    for (const b of o.buffers) {
      const list = byBuffer.get(b.id).sort((p, q) => rank.get(p.session_id) - rank.get(q.session_id) || p.id - q.id);
      const labelsH = list.length ? list.length * LABEL_STEP - (LABEL_STEP - LABEL_H) : 0;
      const inner = Math.max(NODE_H, labelsH);
      bufferTop.set(b.id, top + (inner - NODE_H) / 2);
      list.forEach((a, j) => labelTop.set(a.id, top + (inner - labelsH) / 2 + j * LABEL_STEP));
      bottom = top + inner;
      top += inner + GAP;
    }
  };
  stack();
  const labelMiddle = (a) => labelTop.get(a.id) + LABEL_H / 2;
  rank = new Map([...importers.values()]
    .map((imp) => ({ id: imp.id, key: mean(imp.attachments.map(labelMiddle)), r: rank.get(imp.id) }))
    .sort((p, q) => p.key - q.key || p.r - q.r).map((x, r) => [x.id, r]));
  stack();

  const importerOrder = [...importers.keys()].sort((p, q) => rank.get(p) - rank.get(q));
  const importerTop = place(importerOrder,
    new Map(importerOrder.map((id) => [id, mean(importers.get(id).attachments.map(labelMiddle)) - NODE_H / 2])), bottom);
  const exporterOrder = [...exporters.keys()];
  const exporterTop = place(exporterOrder,
    new Map(exporterOrder.map((id) => [id, mean(exporters.get(id).buffers.map((b) => bufferTop.get(b)))])), bottom);
  for (const tops of [importerTop, exporterTop]) for (const top of tops.values()) bottom = Math.max(bottom, top + NODE_H);
  if (!o.buffers.length) bottom = TOP + NODE_H;
  return { sessions, attachments, exporters, importers, X, width, height: bottom + 10, bufferTop, labelTop, importerTop, exporterTop };
}

function renderGraph(o) {
  const graph = document.getElementById("graph");
  clear(graph);
  const texts = new Map(o.attachments.map((a) => [a.id, edgeLabel(a)]));
  const labelW = Math.max(LABEL_MIN_W, Math.ceil(labelTextWidth(graph, texts.values())) + 20);
  const L = layoutGraph(o, labelW);
  const X = L.X;
  graph.setAttribute("viewBox", "0 0 " + L.width + " " + L.height);
  graph.setAttribute("height", String(L.height));
  graph.style.maxWidth = L.width + "px";

  graph.appendChild(svg("text", { x: X.exporter, y: 18, class: "column-title" }, "exporters"));
  graph.appendChild(svg("text", { x: X.buffer, y: 18, class: "column-title" }, "buffers"));
  graph.appendChild(svg("text", { x: X.label, y: 18, class: "column-title" }, "attachments"));
  graph.appendChild(svg("text", { x: X.importer, y: 18, class: "column-title" }, "importers"));
  if (!o.buffers.length) {
    graph.appendChild(svg("text", { x: X.buffer, y: TOP + 20, class: "sub" }, "no buffers registered"));
  }

  const edges = svg("g", { class: "edges" });
  const nodes = svg("g", { class: "nodes" });
  graph.appendChild(edges);
  graph.appendChild(nodes);
  const middle = (top) => top + NODE_H / 2;

  for (const b of o.buffers) {
    const from = L.exporterTop.get(b.exporter_session_id);
    edges.appendChild(svg("path", {
      class: "edge export", "data-buffer-id": b.id,
      d: curve(X.exporter + NODE_W, middle(from), X.buffer, middle(L.bufferTop.get(b.id))),
    }));
  }
  for (const a of L.attachments) {
    const ly = L.labelTop.get(a.id) + LABEL_H / 2;
    const classes = ["attachment"];
    if (a.non_compliant) classes.push("non-compliant");
    const group = svg("g", {
      class: classes.join(" "), "data-attachment-id": a.id, "data-buffer-id": a.buffer_id, "data-session-id": a.session_id,
      tabindex: 0, role: "button",
      "aria-label": "attachment " + a.id + ": " + (a.buffer_name || "buffer #" + a.buffer_id) + " to pid " + a.importer_pid + ", " + a.map_type,
    });
    for (const d of [
      curve(X.buffer + NODE_W, middle(L.bufferTop.get(a.buffer_id)), X.label, ly),
      curve(X.label + labelW, ly, X.importer, middle(L.importerTop.get(a.session_id))),
    ]) {
      group.appendChild(svg("path", { class: "hit", d }));
      group.appendChild(svg("path", { class: "edge", d }));
    }
    const label = svg("g", { class: "edge-label" });
    label.appendChild(svg("rect", { x: X.label, y: L.labelTop.get(a.id), width: labelW, height: LABEL_H, rx: LABEL_H / 2 }));
    label.appendChild(svg("text", { x: X.label + labelW / 2, y: ly + 4, "text-anchor": "middle" }, texts.get(a.id)));
    group.appendChild(label);
    group.appendChild(svg("title", {}, "attachment " + a.id + " (" + (a.buffer_name || "buffer #" + a.buffer_id) + " → pid " +
      a.importer_pid + "): click for its negotiation trace"));
    group.addEventListener("click", () => selectAttachment(a.id));
    group.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); selectAttachment(a.id); }
    });
    edges.appendChild(group);
  }

  for (const e of L.exporters.values()) {
    const sub = e.gone ? "exporter gone" : "session " + e.id;
    const title = "pid " + who(e.pid, (L.sessions.get(e.id) || {}).name);
    nodes.appendChild(node("exporter", X.exporter, L.exporterTop.get(e.id), title, sub, { "data-session-id": e.id }));
  }
  for (const b of o.buffers) {
    const title = b.name || (b.labels["bufbroker.stream"] !== undefined
      ? b.labels["bufbroker.stream"] + " slot " + b.labels["bufbroker.slot"] : "buffer #" + b.id);
    const sub = "#" + b.id + " · " + bytes(b.size) + " · " + b.offer_types.join(",") + (b.state === "revoked" ? " · revoked" : "");
    nodes.appendChild(node("buffer" + (b.state === "revoked" ? " revoked" : ""), X.buffer, L.bufferTop.get(b.id), title, sub, { "data-buffer-id": b.id }));
  }
  for (const i of L.importers.values()) {
    const s = L.sessions.get(i.id);
    const sub = "session " + i.id + (s && s.non_compliant ? " · non-compliant" : "");
    const title = "pid " + who(i.pid, s && s.name);
    nodes.appendChild(node("importer", X.importer, L.importerTop.get(i.id), title, sub, { "data-session-id": i.id }));
  }
  markSelection();
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

// The selected attachment, its buffer and its importer stand out.
function markSelection() {
  let buffer = null, session = null;
  for (const g of document.querySelectorAll("#graph .attachment")) {
    const on = Number(g.getAttribute("data-attachment-id")) === state.selected;
    g.classList.toggle("selected", on);
    if (on) { buffer = g.getAttribute("data-buffer-id"); session = g.getAttribute("data-session-id"); }
  }
  for (const n of document.querySelectorAll("#graph .node.buffer")) n.classList.toggle("linked", n.getAttribute("data-buffer-id") === buffer);
  for (const n of document.querySelectorAll("#graph .node.importer")) n.classList.toggle("linked", n.getAttribute("data-session-id") === session);
}

// --- traces ---

function selectAttachment(id) {
  state.selected = id;
  markSelection();
  renderSelectedTrace();
}

function renderSelectedTrace() {
  if (state.selected === null || !state.overview) return;
  const box = document.getElementById("trace");
  const a = state.overview.attachments.find((x) => x.id === state.selected);
  clear(box);
  box.setAttribute("data-attachment-id", String(state.selected));
  if (!a) {
    box.appendChild(el("p", { class: "hint" }, "attachment " + state.selected + " is gone (detached)."));
    return;
  }
  const title = "attachment " + a.id + ": importer pid " + a.importer_pid + " (session " + a.session_id + ") → buffer " +
    (a.buffer_name ? a.buffer_name + " (#" + a.buffer_id + ")" : "#" + a.buffer_id);
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
      if (cell.format) td.appendChild(el("span", { class: "format" }, cell.format));
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
    for (const value of [s.id, s.pid, s.name || "-", s.uid, s.gid, s.role, s.buffers, s.attachments, s.mappings, s.fds_held,
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
    for (const value of [b.id, b.name || "-", bytes(b.size), b.state, who(b.exporter_pid, sessionName(b.exporter_session_id)), b.offer_types.join(", "),
      b.attachment_count, b.generation, labels]) {
      row.appendChild(el("td", {}, value));
    }
    row.addEventListener("click", () => { document.getElementById("explain-buffer").value = b.name || String(b.id); });
    body.appendChild(row);
  }
}

// --- streams ---
//
// A consumer's counters are its producer's last report (report_age seconds
// old). Its fps is the change of ``delivered`` between two reports over the
// time between them (unless the producer reports an fps itself), so it is
// right however often this page polls.

async function refreshStreams() {
  state.streamsTimer = null;
  let page;
  try {
    page = await getJSON("/v1/streams?limit=" + STREAM_LIMIT);
  } catch (error) {
    return;
  }
  const now = performance.now() / 1000;
  const live = new Set();
  for (const stream of page.streams) {
    if (stream.report_age === null) continue;
    const at = now - stream.report_age;
    for (const c of stream.consumers) {
      live.add(c.link_id);
      const seen = state.linkSeen.get(c.link_id);
      if (!seen) {
        state.linkSeen.set(c.link_id, { at, delivered: c.counters.delivered });
      } else if (at - seen.at > 0.2) {
        state.linkFps.set(c.link_id, Math.max(0, (c.counters.delivered - seen.delivered) / (at - seen.at)));
        state.linkSeen.set(c.link_id, { at, delivered: c.counters.delivered });
      }
    }
  }
  for (const id of [...state.linkSeen.keys()]) if (!live.has(id)) { state.linkSeen.delete(id); state.linkFps.delete(id); }
  state.streams = page.streams;
  state.streamsTotal = page.total;
  renderStreams();
}

function scheduleStreamsRefresh() {
  if (state.streamsTimer === null) state.streamsTimer = setTimeout(refreshStreams, 80);
}

function consumerFps(c) {
  if (c.counters.fps > 0) return c.counters.fps;
  return state.linkFps.has(c.link_id) ? state.linkFps.get(c.link_id) : null;
}

// One cell per slot, the ones this consumer holds now filled. Reports that
// list the held slots (counters.held_slots) mark those; otherwise the count
// (held_now) is all there is, so that many cells are filled from the left.
function slotStrip(stream, c) {
  const slots = stream.slot_buffer_ids.length;
  const listed = Array.isArray(c.counters.held_slots) ? new Set(c.counters.held_slots) : null;
  const strip = el("span", {
    class: "slot-strip", "data-held": c.counters.held_now,
    title: "holds " + c.counters.held_now + " of " + slots + " slots" +
      (c.counters.held_now ? ", the longest for " + c.counters.longest_hold.toFixed(1) + " s" : ""),
  });
  for (let k = 0; k < slots; k++) {
    const held = listed ? listed.has(k) : k < c.counters.held_now;
    strip.appendChild(el("span", { class: "slot" + (held ? " held" : ""), "data-slot": k, "data-buffer-id": stream.slot_buffer_ids[k] }));
  }
  return strip;
}

function renderStreams() {
  const box = document.getElementById("streams");
  clear(box);
  const streams = state.streams || [];
  document.getElementById("streams-total").textContent =
    state.streamsTotal > streams.length ? "(first " + streams.length + " of " + state.streamsTotal + ")" :
      streams.length ? "(" + streams.length + ")" : "";
  if (!streams.length) {
    box.appendChild(el("p", { class: "hint" }, "no streams"));
    return;
  }
  for (const s of streams) {
    const card = el("div", { class: "stream", "data-stream-name": s.name, "data-stream-id": s.id });
    const head = card.appendChild(el("div", { class: "stream-head" }));
    head.appendChild(el("span", { class: "stream-name" }, s.name));
    head.appendChild(el("span", { class: "stream-producer" }, "producer pid " + who(s.producer_pid, s.producer_name)));
    const fps = s.producer ? s.producer.fps : 0;
    const fpsLine = head.appendChild(el("span", {}, ""));
    fpsLine.appendChild(el("span", { class: "stream-fps", "data-fps": fps.toFixed(2) }, fps.toFixed(1)));
    fpsLine.appendChild(document.createTextNode(" fps"));
    head.appendChild(el("span", { class: "hint" }, s.slot_buffer_ids.length + " slots · " +
      (s.producer ? s.producer.published + " published · " : "") +
      "on stall " + s.on_stall + " after " + s.stall_timeout + " s"));
    if (!s.consumers.length) {
      card.appendChild(el("p", { class: "hint" }, "no consumers"));
      box.appendChild(card);
      continue;
    }
    const table = card.appendChild(el("table", { class: "consumers" }));
    const headRow = el("tr");
    for (const h of ["link", "consumer pid (name)", "mode", "slots held", "fps", "lag", "held", "drops", "latency p50/p99", "stalled"]) {
      headRow.appendChild(el("th", {}, h));
    }
    table.appendChild(el("thead")).appendChild(headRow);
    const body = table.appendChild(el("tbody"));
    for (const c of s.consumers) {
      const k = c.counters;
      const row = el("tr", { class: "consumer" + (c.stalled ? " stalled" : ""), "data-link-id": c.link_id, "data-pid": c.pid });
      row.appendChild(el("td", {}, "#" + c.link_id));
      row.appendChild(el("td", { class: "who" }, "pid " + who(c.pid, c.name)));
      row.appendChild(el("td", {}, c.mode));
      row.appendChild(el("td", {})).appendChild(slotStrip(s, c));
      const measured = consumerFps(c);
      row.appendChild(el("td", { class: "num fps", "data-fps": measured === null ? "" : measured.toFixed(2) },
        measured === null ? "-" : measured.toFixed(1)));
      row.appendChild(el("td", { class: "num lag" }, k.lag));
      row.appendChild(el("td", { class: "num held" }, k.held_now + "/" + c.max_held + (k.held_now ? " · " + k.longest_hold.toFixed(1) + " s" : "")));
      row.appendChild(el("td", { class: "num drops", title: "busy " + k.dropped_busy + " · overwritten " + k.dropped_overwritten },
        k.dropped_busy + k.dropped_overwritten));
      row.appendChild(el("td", { class: "num" }, k.latency_p50_us ? k.latency_p50_us.toFixed(0) + " / " + k.latency_p99_us.toFixed(0) + " µs" : "-"));
      const mark = row.appendChild(el("td", { class: "stalled-cell" }));
      if (c.stalled) mark.appendChild(el("span", { class: "stalled-mark" }, "stalled " + k.longest_hold.toFixed(1) + " s"));
      else mark.textContent = "no";
      body.appendChild(row);
    }
    box.appendChild(card);
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
//
// The first request asks the broker to replay what it remembers (EventSource
// cannot send Last-Event-ID then, so the query says "after 0"); when it
// reconnects, EventSource sends Last-Event-ID itself, which the broker
// prefers, and the stream resumes after the last event shown.

function clock(seconds) {
  if (typeof seconds !== "number") return "";
  const d = new Date(seconds * 1000), two = (n) => String(n).padStart(2, "0");
  return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds()) + " ";
}

function logEvent(kind, data) {
  const list = document.getElementById("events");
  let text = clock(data.time) + "#" + data.seq + " " + kind;
  if (data.buffer_id) text += " buffer " + data.buffer_id;
  if (data.attachment_id) text += " attachment " + data.attachment_id;
  if (data.session_id) text += " session " + data.session_id;
  const detail = Object.entries(data.detail || {}).map(([k, v]) => k + "=" + JSON.stringify(v)).join(" ");
  if (detail) text += " · " + detail;
  list.insertBefore(el("li", { "data-kind": kind, "data-seq": data.seq }, text), list.firstChild);
  while (list.childNodes.length > EVENT_LIMIT) list.removeChild(list.lastChild);
}

function connectEvents() {
  const live = document.getElementById("live");
  const source = new EventSource("/v1/events?last_event_id=0");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; scheduleRefresh(); scheduleStreamsRefresh(); };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  for (const kind of EVENT_KINDS) {
    source.addEventListener(kind, (event) => {
      let data = {};
      try { data = JSON.parse(event.data); } catch (error) { return; }
      logEvent(kind, data);
      if (kind !== "negotiated") scheduleRefresh();
    });
  }
  for (const kind of STREAM_KINDS) {
    source.addEventListener(kind, (event) => {
      let data = {};
      try { data = JSON.parse(event.data); } catch (error) { return; }
      logEvent(kind, data);
      scheduleStreamsRefresh();
      if (kind !== "stalled") scheduleRefresh();
    });
  }
  source.addEventListener("dropped", () => logEvent("dropped", { seq: "-", detail: { why: "this page read too slowly" } }));
}

document.getElementById("explain-form").addEventListener("submit", explain);
refresh();
refreshStreams();
connectEvents();
sample();
setInterval(sample, 1000);
setInterval(refreshStreams, 1000);
