// The console's pages. Each page function fetches its data once, builds its
// DOM, subscribes to the live snapshot to keep its numbers current, and
// returns {el, stop, title}.

import {
  h, svg, api, link, route, table, setText, fmtNum, fmtRate, fmtBytes, fmtAge, fmtTime,
  payloadText, onSnapshot, readOnly, confirmAction, fill,
} from "./app.js";
import { FlowGraph } from "./graph.js";

function page(title, ...children) {
  return h("section", { class: "page" }, h("h1", {}, title), ...children);
}

function notice(kind, text) {
  return h("p", { class: kind, role: kind === "error" ? "alert" : "status" }, text);
}

function filterBox(placeholder, onInput) {
  return h("input", { type: "search", class: "filter", placeholder, oninput: (ev) => onInput(ev.target.value) });
}

function filterRows(rows, text) {
  const q = text.trim().toLowerCase();
  for (const tr of rows) tr.hidden = !!q && !tr.dataset.name.toLowerCase().includes(q);
}

// ------------------------------------------------------------------ overview

function chart(title, points, index, color) {
  const W = 320, H = 80;
  const path = svg("path", { class: "spark", stroke: color });
  const area = svg("path", { class: "spark-area", fill: color });
  const now = h("span", { class: "chart-now" }, "");
  const el = h("figure", { class: "chart" },
    h("figcaption", {}, title, " ", now),
    svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", class: "spark-svg" }, area, path));
  const draw = () => {
    const pts = points.slice(-300);
    const max = Math.max(1, ...pts.map((p) => p[index]));
    const t0 = pts.length ? pts[0][0] : 0, t1 = pts.length ? pts[pts.length - 1][0] : 1;
    const span = Math.max(1, t1 - t0);
    const xy = pts.map((p) => [((p[0] - t0) / span) * W, H - 4 - (p[index] / max) * (H - 8)]);
    const d = xy.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    path.setAttribute("d", d || "M0,76 L320,76");
    area.setAttribute("d", xy.length ? `${d} L${W},${H} L0,${H} z` : "");
    setText(now, pts.length ? `${fmtRate(pts[pts.length - 1][index])} (max ${fmtRate(max === 1 ? 0 : max)})` : "");
  };
  draw();
  return { el, draw };
}

function changeText(c) {
  const what = [c.kind, c.entity, c.name, c.field].filter(Boolean).join(" ");
  const how = c.safe === false ? "unsafe" : "safe";
  const values = c.field ? `: ${JSON.stringify(c.old)} → ${JSON.stringify(c.new)}` : "";
  return `${how}: ${what}${values}${c.reason ? " — " + c.reason : ""}`;
}

async function overview() {
  const data = await api("overview");
  const history = data.history.slice();
  const charts = [
    chart("In (published, appended)", history, 1, "#1f6feb"),
    chart("Out (acked, committed)", history, 2, "#2da44e"),
    chart("Dead-lettered", history, 3, "#cf222e"),
  ];
  const health = h("span", { class: "pill" }, "");
  const uptime = h("span", {}, "");
  const gen = h("span", {}, String(data.generation));
  const hash = h("code", { title: data.hash }, data.hash.slice(0, 12));
  const started = Date.now() / 1000 - data.uptime_s;
  const counts = Object.entries(data.counts).map(([k, v]) => h("div", { class: "count" }, h("b", {}, String(v)), " ", k.replace("_", " ")));
  const reloads = data.reloads.length
    ? table(["when", "trigger", "result", "generation", "detail"], data.reloads.map((r) => h("tr", { class: "reload " + r.result },
      h("td", {}, fmtTime(r.at * 1000)), h("td", {}, r.trigger), h("td", {}, h("span", { class: "pill " + r.result }, r.result)),
      h("td", {}, String(r.generation)),
      h("td", {}, r.error ? h("div", {}, r.error) : null,
        r.changes && r.changes.length ? h("details", { open: r.result === "refused" },
          h("summary", {}, `${r.changes.length} change(s) in the plan`),
          h("ul", {}, r.changes.map((c) => h("li", { class: c.safe === false ? "unsafe" : "" }, changeText(c))))) : null,
        r.problems && r.problems.length ? h("ul", {}, r.problems.map((p) => h("li", {}, `${p.file}:${p.line}:${p.column}: ${p.message}`))) : null))), { class: "reloads" })
    : notice("muted", "No reload since the daemon started.");
  const el = page(data.name ? `Topology ${data.name}` : "Topology",
    h("div", { class: "cards" },
      h("div", { class: "card" }, h("h3", {}, "Health"), health),
      h("div", { class: "card" }, h("h3", {}, "Uptime"), uptime),
      h("div", { class: "card" }, h("h3", {}, "Topology"), h("div", {}, data.name || "(unnamed)"), h("div", { class: "muted" }, "hash ", hash, " · generation ", gen)),
      h("div", { class: "card" }, h("h3", {}, "Files"), h("ul", { class: "files" }, data.files.map((f) => h("li", {}, f))))),
    h("div", { class: "counts" }, counts),
    h("h2", {}, "Rates, last 10 minutes"),
    h("div", { class: "charts" }, charts.map((c) => c.el)),
    h("h2", {}, "Reloads"), reloads);
  const stop = onSnapshot((snap) => {
    setText(health, snap.health.accepting ? "healthy" : "draining");
    health.className = "pill " + (snap.health.accepting ? "applied" : "refused");
    setText(uptime, fmtAge(Date.now() / 1000 - started));
    setText(gen, String(snap.health.generation));
    if (!history.length || history[history.length - 1][0] < snap.t) {
      history.push([snap.t, snap.totals.in, snap.totals.out, snap.totals.dead]);
      if (history.length > 600) history.shift();
      for (const c of charts) c.draw();
    }
  });
  return { el, stop, title: "Overview" };
}

// ------------------------------------------------------------------ flow

function openNode(n) {
  if (n.kind === "queue") location.hash = n.dlq ? route("dlq", n.name) : route("queues", n.name);
  else if (n.kind === "topic") location.hash = n.dlq ? route("dlq", n.name) : route("topics", n.name);
  else if (n.kind === "group") location.hash = route("groups", n.name);
  else if (n.kind === "consumer") location.hash = route("queues") + "?consumer=" + encodeURIComponent(n.name);
  else location.hash = route("queues") + "?exchange=" + encodeURIComponent(n.name);
}

async function flow() {
  const data = await api("flow");
  const graph = new FlowGraph(data, { onOpen: openNode });
  graph.update(data.snapshot);
  const count = h("span", { class: "muted" }, `${data.nodes.length} nodes, ${data.edges.length} edges`);
  let matches = new Set();
  const box = filterBox("filter by name…", (text) => {
    matches = graph.filter(text);
    setText(count, text.trim() ? `${matches.size} of ${data.nodes.length} match` : `${data.nodes.length} nodes, ${data.edges.length} edges`);
  });
  box.addEventListener("keydown", (ev) => { if (ev.key === "Enter") graph.fit(matches); });
  const el = page("Flow",
    h("div", { class: "toolbar" }, box,
      h("button", { onclick: () => graph.zoomBy(1.25), title: "zoom in" }, "+"),
      h("button", { onclick: () => graph.zoomBy(0.8), title: "zoom out" }, "−"),
      h("button", { onclick: () => graph.fit(matches.size ? matches : null), title: "fit to view" }, "Fit"),
      count,
      h("span", { class: "legend" }, ["exchange", "queue", "topic", "consumer", "group"].map((k) => h("span", { class: "key " + k }, k)),
        h("span", { class: "key dlq" }, "dead letters"), h("span", { class: "key dashed" }, "- - fallback / dead-letter route"))),
    h("div", { class: "flow-wrap" }, graph.el));
  requestAnimationFrame(() => graph.fit());
  const stop = onSnapshot((snap) => graph.update(snap));
  return { el, stop, title: "Flow" };
}

// ------------------------------------------------------------------ queues

function messageView(m, extra) {
  return h("article", { class: "message" },
    h("header", {}, extra || null,
      m.message_id ? h("span", {}, "id ", h("code", {}, m.message_id)) : null,
      h("span", {}, "key ", h("code", {}, m.routing_key || "")),
      m.exchange ? h("span", {}, "exchange ", h("code", {}, m.exchange)) : null,
      h("span", {}, "priority ", String(m.priority)),
      h("span", {}, "deliveries ", String(m.delivery_count)),
      h("span", {}, fmtTime(m.timestamp))),
    h("div", { class: "cols" },
      h("div", {}, h("h4", {}, "Body"), h("pre", { class: "body" }, payloadText(m, "body"))),
      h("div", {}, h("h4", {}, "Headers"), h("pre", { class: "headers" }, JSON.stringify(m.headers, null, 2)))));
}

async function queues(name) {
  if (name) return queueDetail(name);
  const [data, params] = [await api("queues"), new URLSearchParams(location.hash.split("?")[1] || "")];
  const cells = new Map();
  const rows = data.queues.map((q) => {
    const c = { ready: h("td", { class: "num" }), unacked: h("td", { class: "num" }), delayed: h("td", { class: "num" }),
      in: h("td", { class: "num" }), out: h("td", { class: "num" }), age: h("td", { class: "num" }) };
    cells.set(q.name, c);
    return h("tr", { dataset: { name: q.name } },
      h("td", {}, link(q.is_dlq ? route("dlq", q.name) : route("queues", q.name), q.name), q.is_dlq ? h("span", { class: "tag dlq" }, "DLQ") : null),
      c.ready, c.unacked, c.delayed, c.in, c.out, c.age,
      h("td", {}, q.consumers.join(", ") || "–"), h("td", {}, q.dead_letter_to || "–"));
  });
  const t = table(["queue", "ready", "unacked", "delayed", "in", "out", "oldest", "consumers", "dead letters to"], rows, { class: "grid", id: "queues-table" });
  const bindings = table(["exchange", "to", "matches"], data.bindings.map((b) =>
    h("tr", { dataset: { name: b.exchange + " " + b.to } }, h("td", {}, b.exchange), h("td", {}, `${b.kind} ${b.to}`), h("td", {}, h("code", {}, b.match || "(all)")))), { class: "grid" });
  const box = filterBox("filter queues…", (text) => filterRows(rows, text));
  const wanted = params.get("consumer") || params.get("exchange");
  const el = page("Queues", h("div", { class: "toolbar" }, box), t, h("h2", {}, "Bindings"), bindings);
  if (params.get("consumer")) {
    const q = data.queues.find((x) => x.consumers.includes(wanted));
    if (q) { box.value = q.name; filterRows(rows, q.name); }
  }
  const update = (snap) => {
    for (const [qname, c] of cells) {
      const q = snap.q[qname];
      if (!q) continue;
      setText(c.ready, fmtNum(q.ready)); setText(c.unacked, fmtNum(q.unacked));
      setText(c.delayed, fmtNum(q.delayed)); setText(c.in, fmtRate(q.in));
      setText(c.out, fmtRate(q.out)); setText(c.age, fmtAge(q.age));
    }
  };
  update(data.snapshot);
  const stop = onSnapshot(update);
  return { el, stop, title: "Queues" };
}

async function queueDetail(name) {
  const counters = h("dl", { class: "stats" });
  const list = h("div", { class: "messages" });
  const n = h("input", { type: "number", value: "20", min: "1", max: "1000", class: "small" });
  const peek = async () => {
    let data;
    try {
      data = await api(`queues/${encodeURIComponent(name)}/messages?n=${Number(n.value) || 20}`);
    } catch (err) {  // e.g. a quorum queue on RabbitMQ: the counters still show
      if (err && err.status === 401) throw err;
      fill(list, notice("error", err.message));
      return;
    }
    fill(list, data.messages.length
      ? h("div", {}, data.messages.map((m, i) => messageView(m, h("b", {}, `#${i + 1}`))))
      : notice("muted", "The queue holds no ready message."));
  };
  const el = page(`Queue ${name}`, counters,
    h("div", { class: "toolbar" }, h("button", { onclick: peek, id: "peek" }, "Peek"), " the next ", n,
      " ready messages (they stay in the queue)"), list);
  const stop = onSnapshot((snap) => {
    const q = snap.q[name];
    if (!q) return;
    fill(counters, ...["ready", "unacked", "delayed"].flatMap((k) => [h("dt", {}, k), h("dd", { dataset: { stat: k } }, fmtNum(q[k]))]),
      h("dt", {}, "in"), h("dd", {}, fmtRate(q.in)), h("dt", {}, "out"), h("dd", {}, fmtRate(q.out)),
      h("dt", {}, "oldest"), h("dd", {}, fmtAge(q.age)));
  });
  await peek();
  return { el, stop, title: name };
}

// ------------------------------------------------------------------ topics and groups

async function topics(name) {
  if (name) return topicDetail(name);
  const [data, gdata] = await Promise.all([api("topics"), api("groups")]);
  const cells = new Map();
  const rows = data.topics.map((t) => {
    const c = { records: h("td", { class: "num" }), rate: h("td", { class: "num" }), size: h("td", { class: "num" }) };
    cells.set(t.name, c);
    return h("tr", { dataset: { name: t.name } },
      h("td", {}, link(t.is_dlq ? route("dlq", t.name) : route("topics", t.name), t.name), t.is_dlq ? h("span", { class: "tag dlq" }, "DLQ") : null),
      h("td", { class: "num" }, String(t.partitions)), c.records, c.rate, c.size,
      h("td", {}, t.retention || "forever"), h("td", {}, t.cleanup_policy), h("td", {}, t.groups.join(", ") || "–"));
  });
  const lagCells = new Map();
  const grows = gdata.groups.map((g) => {
    const lag = h("td", { class: "num" }), members = h("td", { class: "num" }), rate = h("td", { class: "num" });
    lagCells.set(g.name, { lag, members, rate });
    return h("tr", { dataset: { name: g.name } }, h("td", {}, link(route("groups", g.name), g.name)),
      h("td", {}, g.topics.join(", ")), lag, rate, members, h("td", {}, g.handler || "external (HTTP)"), h("td", {}, g.delivery));
  });
  const update = (snap) => {
    for (const [tname, c] of cells) {
      const t = snap.t_[tname];
      if (!t) continue;
      setText(c.records, fmtNum(t.records)); setText(c.rate, fmtRate(t.rate)); setText(c.size, fmtBytes(t.size));
    }
    for (const [gname, c] of lagCells) {
      const g = snap.g[gname];
      if (!g) continue;
      setText(c.lag, fmtNum(g.lag)); setText(c.members, fmtNum(g.members)); setText(c.rate, fmtRate(g.rate));
    }
  };
  const el = page("Topics and groups",
    h("div", { class: "toolbar" }, filterBox("filter…", (text) => { filterRows(rows, text); filterRows(grows, text); })),
    table(["topic", "partitions", "records", "in", "size", "retention", "cleanup", "groups"], rows, { class: "grid", id: "topics-table" }),
    h("h2", {}, "Consumer groups"),
    table(["group", "topics", "lag", "rate", "members", "handler", "delivery"], grows, { class: "grid", id: "groups-table" }));
  const stop = onSnapshot(update);
  return { el, stop, title: "Topics" };
}

function recordsTable(records) {
  if (!records.length) return notice("muted", "No record there.");
  return table(["offset", "time", "key", "value", "headers"], records.map((r) => h("tr", {},
    h("td", { class: "num" }, String(r.offset)), h("td", {}, fmtTime(r.timestamp)),
    h("td", {}, h("code", {}, r.key === undefined && r.key_b64 === undefined ? "" : payloadText(r, "key"))),
    h("td", {}, h("pre", { class: "body" }, payloadText(r, "value"))),
    h("td", {}, h("pre", { class: "headers" }, JSON.stringify(r.headers, null, 2))))), { class: "grid records" });
}

async function topicDetail(name) {
  const data = await api("topics");
  const t = data.topics.find((x) => x.name === name);
  if (!t) throw new Error(`topic '${name}' not found`);
  const pcells = t.partition_info.map((p) => ({ start: h("td", { class: "num" }, String(p.log_start_offset)),
    end: h("td", { class: "num" }, String(p.log_end_offset)), size: h("td", { class: "num" }, fmtBytes(p.size_bytes)) }));
  const parts = table(["partition", "log start", "log end", "size", "oldest record"], t.partition_info.map((p, i) =>
    h("tr", {}, h("td", { class: "num" }, String(p.partition)), pcells[i].start, pcells[i].end, pcells[i].size,
      h("td", {}, fmtTime(p.oldest_timestamp)))), { class: "grid" });
  const partition = h("select", {}, t.partition_info.map((p) => h("option", { value: String(p.partition) }, `partition ${p.partition}`)));
  const mode = h("select", {}, h("option", { value: "offset" }, "from offset"), h("option", { value: "timestamp" }, "from time"));
  const at = h("input", { type: "text", placeholder: "offset (empty: log start) or 2024-01-15T10:00:00Z", class: "wide" });
  const limit = h("input", { type: "number", value: "50", min: "1", max: "1000", class: "small" });
  const out = h("div", {});
  let next = null;
  const read = async (from) => {
    const q = new URLSearchParams({ partition: partition.value, limit: limit.value || "50" });
    if (from !== undefined) q.set("offset", String(from));
    else if (mode.value === "timestamp" && at.value.trim()) {
      const ms = Date.parse(at.value.trim());
      if (Number.isNaN(ms)) { fill(out, notice("error", "not a date and time: " + at.value)); return; }
      q.set("timestamp", String(ms));
    } else if (at.value.trim()) q.set("offset", at.value.trim());
    try {
      const r = await api(`topics/${encodeURIComponent(name)}/records?${q}`);
      next = r.next_offset;
      fill(out, h("p", { class: "muted" }, `partition ${r.partition}, offsets ${r.offset}–${r.next_offset - 1} (log ${r.log_start_offset}–${r.log_end_offset})`),
        recordsTable(r.records), r.next_offset < r.log_end_offset ? h("button", { onclick: () => read(next) }, "Next page") : null);
    } catch (err) { fill(out, notice("error", err.message)); }
  };
  const el = page(`Topic ${name}`,
    h("p", { class: "muted" }, `${t.partitions} partition(s) · retention ${t.retention || "forever"} · cleanup ${t.cleanup_policy}` + (t.key ? ` · key ${t.key}` : "")),
    parts,
    h("p", {}, "Read by: ", t.groups.length ? t.groups.map((g, i) => [i ? ", " : "", link(route("groups", g), g)]) : "no group"),
    h("h2", {}, "Records"),
    h("div", { class: "toolbar" }, partition, mode, at, "limit ", limit, h("button", { onclick: () => read(), id: "read" }, "Read")),
    out);
  const stop = onSnapshot((snap) => {
    const live = snap.t_[name];
    if (!live) return;
    live.p.forEach(([s, e, size], i) => {
      if (!pcells[i]) return;
      setText(pcells[i].start, String(s)); setText(pcells[i].end, String(e)); setText(pcells[i].size, fmtBytes(size));
    });
  });
  await read();
  return { el, stop, title: name };
}

async function groups(name) {
  if (!name) { location.hash = route("topics"); return { el: h("div") }; }
  const all = await api("groups");
  let g = all.groups.find((x) => x.name === name);
  if (!g) throw new Error(`consumer group '${name}' not found`);
  const body = h("tbody", {});
  const fillRows = (grp) => fill(body, ...grp.partitions.map((p) => h("tr", {},
    h("td", {}, p.topic), h("td", { class: "num" }, String(p.partition)),
    h("td", { class: "num" }, p.committed === null ? `– (${p.position})` : String(p.committed)),
    h("td", { class: "num" }, String(p.log_end_offset)), h("td", { class: "num lag" }, String(p.lag)),
    h("td", {}, p.member || "–"))));
  fillRows(g);
  const topic = h("select", {}, h("option", { value: "" }, "all topics"), g.topics.map((t) => h("option", { value: t }, t)));
  const partition = h("input", { type: "number", min: "0", placeholder: "all", class: "small" });
  const to = h("select", { id: "reset-to" }, ["earliest", "latest", "offset", "timestamp"].map((v) => h("option", { value: v }, v)));
  const value = h("input", { type: "text", placeholder: "offset, or 2024-01-15T10:00:00Z", class: "wide", id: "reset-value" });
  const preview = h("div", { id: "reset-preview" });
  const applyBtn = h("button", { class: "danger", disabled: true, id: "reset-apply" }, "Apply reset");
  let planned = null;
  const request = () => {
    const b = { to: to.value };
    if (topic.value) b.topic = topic.value;
    if (partition.value !== "") b.partition = Number(partition.value);
    if (to.value === "offset") b.offset = Number(value.value);
    if (to.value === "timestamp") b.timestamp = Date.parse(value.value);
    return b;
  };
  const show = (res) => table(["topic", "partition", "now", "→ new", "lag now", "→ lag after"], res.partitions.map((p) => h("tr", {},
    h("td", {}, p.topic), h("td", { class: "num" }, String(p.partition)), h("td", { class: "num" }, String(p.current)),
    h("td", { class: "num" + (p.target !== p.current ? " changed" : "") }, String(p.target)),
    h("td", { class: "num" }, String(p.lag_before)), h("td", { class: "num" }, String(p.lag_after)))), { class: "grid" });
  const dry = async () => {
    applyBtn.disabled = true;
    try {
      const b = request();
      const res = await api(`groups/${encodeURIComponent(name)}/reset`, { ...b, dry_run: true });
      planned = b;
      fill(preview, h("p", {}, "Dry run: nothing changed yet. This is what the reset would do:"), show(res));
      applyBtn.disabled = false;
    } catch (err) { fill(preview, notice("error", err.message)); }
  };
  const apply = async () => {
    if (!planned) return;
    if (!(await confirmAction(`Move the offsets of group ${name} as previewed?`))) return;
    try {
      const res = await api(`groups/${encodeURIComponent(name)}/reset`, { ...planned, dry_run: false });
      fill(preview, notice("ok", "Offsets reset."), show(res));
      planned = null; applyBtn.disabled = true;
      g = (await api("groups")).groups.find((x) => x.name === name); fillRows(g);
    } catch (err) { fill(preview, notice("error", err.message)); }
  };
  applyBtn.addEventListener("click", apply);
  const el = page(`Group ${name}`,
    h("p", { class: "muted" }, `${g.handler ? "handler " + g.handler : "external group (HTTP consumers)"} · ${g.delivery} · reset ${g.offset_reset}` + (g.dlq_policy ? ` · dlq policy ${g.dlq_policy}` : "")),
    h("p", {}, "Members: ", g.members.length ? g.members.join(", ") : "none"),
    table(["topic", "partition", "committed", "log end", "lag", "owner"], body, { class: "grid", id: "group-table" }),
    readOnly() ? null : h("section", { class: "reset" }, h("h2", {}, "Reset offsets"),
      h("div", { class: "toolbar" }, topic, "partition ", partition, "to ", to, value,
        h("button", { onclick: dry, id: "reset-dry" }, "Preview (dry run)"), applyBtn),
      preview));
  let lastLag = null;
  const stop = onSnapshot(async (snap) => {
    const live = snap.g[name];
    if (live && lastLag !== null && live.lag !== lastLag) {
      const fresh = (await api("groups")).groups.find((x) => x.name === name);
      if (fresh) fillRows(fresh);
    }
    lastLag = live ? live.lag : null;
  });
  return { el, stop, title: name };
}

// ------------------------------------------------------------------ dead letters

async function dlq(name) {
  if (name) return dlqDetail(name);
  const data = await api("dlq");
  const cells = new Map();
  const rows = data.dead_letter_queues.map((d) => {
    const depth = h("td", { class: "num" }, fmtNum(d.depth)), age = h("td", { class: "num" }, fmtAge(d.age_s));
    cells.set(d.name, { depth, age, kind: d.kind });
    return h("tr", { dataset: { name: d.name } }, h("td", {}, link(route("dlq", d.name), d.name)), h("td", {}, d.kind), depth, age);
  });
  const el = page("Dead letters", rows.length
    ? table(["dead-letter queue or topic", "kind", "depth", "oldest"], rows, { class: "grid", id: "dlq-table" })
    : notice("muted", "This topology declares no dead-letter queue or topic."));
  const stop = onSnapshot((snap) => {
    for (const [n, c] of cells) {
      if (c.kind === "queue" && snap.q[n]) { setText(c.depth, fmtNum(snap.q[n].ready)); setText(c.age, fmtAge(snap.q[n].age)); }
      if (c.kind === "topic" && snap.t_[n] && snap.t_[n].pending !== undefined) {
        setText(c.depth, fmtNum(snap.t_[n].pending));
        if (!snap.t_[n].pending) setText(c.age, fmtAge(0));
      }
    }
  });
  return { el, stop, title: "Dead letters" };
}

function deathView(d) {
  if (!d || typeof d !== "object") return notice("muted", "No x-dead-letter header (not a dead letter).");
  const err = d.error && typeof d.error === "object" ? d.error : null;
  const origin = d.original_topic
    ? `topic ${d.original_topic} partition ${d.original_partition} offset ${d.original_offset}` + (d.original_group ? ` (group ${d.original_group})` : "")
    : `queue ${d.original_queue || "?"}` + (d.original_exchange ? ` via exchange ${d.original_exchange}` : "") + (d.original_routing_key ? ` key ${d.original_routing_key}` : "");
  return h("div", { class: "death" },
    h("dl", {},
      h("dt", {}, "reason"), h("dd", { class: "reason" }, String(d.reason || "?")),
      err ? [h("dt", {}, "error"), h("dd", { class: "error-line" }, h("b", {}, String(err.type || "")), ": ", String(err.message || ""))] : null,
      h("dt", {}, "retries"), h("dd", {}, String(d.retry_count ?? "–")),
      h("dt", {}, "origin"), h("dd", {}, origin),
      h("dt", {}, "first attempt"), h("dd", {}, String(d.first_attempt || "–")),
      h("dt", {}, "last attempt"), h("dd", {}, String(d.last_attempt || "–")),
      d.death_count ? [h("dt", {}, "deaths"), h("dd", {}, String(d.death_count))] : null,
      d.consumer_id ? [h("dt", {}, "consumer"), h("dd", {}, String(d.consumer_id))] : null),
    err && err.stack_trace ? h("details", { class: "trace", open: true }, h("summary", {}, "stack trace"), h("pre", { class: "stack" }, String(err.stack_trace))) : null);
}

async function dlqDetail(name) {
  const list = h("div", { class: "letters" });
  const status = h("div", { class: "status" });
  const selected = new Set();
  let data = null;
  const ro = readOnly();
  const isQueue = () => data && data.kind === "queue";
  // a queue's letters are chosen by id, a topic's by partition and offset ("p:o")
  const keyOf = (m) => isQueue() ? m.id : `${m.partition}:${m.offset}`;
  const choose = (keys) => isQueue() ? { ids: keys } : { records: keys.map((k) => {
    const [p, o] = String(k).split(":").map(Number);
    return { partition: p, offset: o };
  }) };
  const act = async (what, body, text) => {
    try {
      if (what === "purge") {
        if (!(await confirmAction(text))) return;
        const res = await api(`dlq/${encodeURIComponent(name)}/purge`, { ...body, confirm: name });
        fill(status, notice("ok", `Purged ${res.purged} dead letter(s).`));
      } else {
        const res = await api(`dlq/${encodeURIComponent(name)}/replay`, body);
        const why = Object.entries(res.skipped_reasons || {}).map(([r, n]) => `${n}: ${r}`).join("; ");
        fill(status, notice(res.skipped ? "warn" : "ok", `Replayed ${res.replayed} dead letter(s)` + (res.skipped ? `, ${res.skipped} stayed (${why})` : ".")));
      }
      selected.clear();
      await load();
    } catch (err) { fill(status, notice("error", err.message)); }
  };
  const toolbar = h("div", { class: "toolbar" });
  const load = async () => {
    data = await api(`dlq/${encodeURIComponent(name)}?n=200`);
    // a backend without ids to choose by (RabbitMQ) acts on all letters only
    const pick = !ro && data.choose !== false;
    fill(toolbar, 
      h("span", {}, `${data.letters.length} dead letter(s) shown`),
      !ro ? [
        pick ? h("button", { id: "replay-selected", onclick: () => selected.size && act("replay", choose([...selected])) }, "Replay selected") : null,
        h("button", { id: "replay-all", onclick: () => act("replay", { all: true }) }, "Replay all"),
        pick ? h("button", { id: "purge-selected", class: "danger", onclick: () => selected.size && act("purge", choose([...selected]), isQueue()
          ? `Delete ${selected.size} selected dead letter(s) of ${name} for good?`
          : `Mark ${selected.size} selected dead letter(s) of topic ${name} as handled? The records stay in the log until retention, but they are no longer pending or replayable from here.`) }, "Purge selected") : null,
        h("button", { id: "purge-all", class: "danger", onclick: () => act("purge", { all: true }, isQueue()
          ? `Delete ALL dead letters of ${name} for good? This cannot be undone.`
          : `Mark ALL pending dead letters of topic ${name} as handled? The records stay in the log until retention, but they are no longer pending or replayable from here.`) }, "Purge all"),
      ] : null,
      !isQueue() ? h("span", { class: "muted" }, " (pending records of a dead-letter topic; the log keeps them after a replay or purge)") : null,
      data.note ? h("span", { class: "muted", id: "choose-note" }, " " + data.note) : null);
    fill(list, ...(data.letters.length ? data.letters.map((m, i) => {
      const id = keyOf(m);
      const box = pick ? h("input", { type: "checkbox", class: "pick", checked: selected.has(id),
        onchange: (ev) => { if (ev.target.checked) selected.add(id); else selected.delete(id); } }) : null;
      return h("article", { class: "letter", dataset: { id: String(id ?? i) } },
        h("header", {}, box, h("b", {}, isQueue() ? `#${i + 1}` : `p${m.partition}@${m.offset}`),
          pick ? h("button", { class: "replay-one", onclick: () => act("replay", choose([id])) }, "Replay") : null),
        deathView(m.death),
        h("details", {}, h("summary", {}, "message"),
          h("div", { class: "cols" },
            h("div", {}, h("h4", {}, "Body"), h("pre", { class: "body" }, payloadText(m, isQueue() ? "body" : "value"))),
            h("div", {}, h("h4", {}, "Headers"), h("pre", { class: "headers" }, JSON.stringify(m.headers, null, 2))))));
    }) : [notice("muted", "No dead letter here.")]));
  };
  await load();
  const el = page(`Dead letters in ${name}`, status, toolbar, list);
  let last = null;
  const stop = onSnapshot((snap) => {
    const depth = isQueue() ? snap.q[name] && snap.q[name].ready : snap.t_[name] && snap.t_[name].pending;
    if (last !== null && depth !== last) load().catch(() => null);
    last = depth;
  });
  return { el, stop, title: name };
}

export const pages = { overview, flow, queues, topics, groups, dlq };
