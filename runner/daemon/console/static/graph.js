// The flow graph: a layered layout of the topology's diagram drawn as SVG,
// with zoom (wheel, buttons, fit), pan (drag) and a name filter.
//
// Columns follow the flow: exchanges, then queues and topics, then consumers
// and groups, then the dead-letter queues and topics. A column taller than
// COLUMN_MAX nodes wraps into several, so 500 entities stay a wide picture
// rather than a thin line. Within a column, nodes are ordered by the mean
// position of their neighbours (a few barycentre sweeps), which keeps most
// edges short and uncrossed.

import { svg, fmtNum, fmtRate } from "./app.js";

const W = 210, H = 46, GAP_X = 90, GAP_Y = 14, COLUMN_MAX = 30, PAD = 30;

function column(node) {
  if (node.kind === "exchange") return 0;
  if (node.dlq) return 3;
  if (node.kind === "queue" || node.kind === "topic") return 1;
  return 2;
}

export function layout(nodes, edges) {
  const neighbours = new Map(nodes.map((n) => [n.id, []]));
  for (const e of edges) {
    if (neighbours.has(e.source) && neighbours.has(e.target)) {
      neighbours.get(e.source).push(e.target);
      neighbours.get(e.target).push(e.source);
    }
  }
  const cols = [[], [], [], []];
  for (const n of nodes) cols[column(n)].push(n);
  const rank = new Map();
  const setRanks = () => cols.forEach((c) => c.forEach((n, i) => rank.set(n.id, i / Math.max(1, c.length))));
  setRanks();
  for (let sweep = 0; sweep < 4; sweep++) {
    for (const c of cols) {
      const key = new Map(c.map((n) => {
        const ns = neighbours.get(n.id);
        if (!ns.length) return [n.id, rank.get(n.id)];
        let sum = 0;
        for (const m of ns) sum += rank.get(m);
        return [n.id, sum / ns.length];
      }));
      c.sort((a, b) => key.get(a.id) - key.get(b.id));
    }
    setRanks();
  }
  const pos = new Map();
  let x = PAD, tallest = 0;
  const heads = [];
  for (let ci = 0; ci < cols.length; ci++) {
    const c = cols[ci];
    if (!c.length) continue;
    const wraps = Math.ceil(c.length / COLUMN_MAX);
    const per = Math.ceil(c.length / wraps);
    heads.push({ x, col: ci });
    for (let w = 0; w < wraps; w++) {
      const slice = c.slice(w * per, (w + 1) * per);
      slice.forEach((n, i) => pos.set(n.id, { x, y: PAD + 22 + i * (H + GAP_Y) }));
      tallest = Math.max(tallest, slice.length);
      x += W + (w === wraps - 1 ? GAP_X : 24);
    }
  }
  return { pos, heads, width: x - GAP_X + PAD, height: PAD * 2 + 22 + tallest * (H + GAP_Y) };
}

const HEADINGS = ["Exchanges", "Queues and topics", "Consumers and groups", "Dead letters"];

function short(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

// metric text of a node from a live snapshot
export function metric(node, snap) {
  if (!snap) return "";
  const name = node.name;
  if (node.kind === "queue") {
    const q = snap.q[name];
    return q ? `${fmtNum(q.ready)} ready · ${fmtNum(q.unacked)} unacked · ${fmtRate(q.in)}` : "";
  }
  if (node.kind === "topic") {
    const t = snap.t_[name];
    return t ? `${fmtNum(t.records)} records · ${fmtRate(t.rate)}` : "";
  }
  if (node.kind === "group") {
    const g = snap.g[name];
    return g ? `lag ${fmtNum(g.lag)} · ${fmtRate(g.rate)}` : "";
  }
  if (node.kind === "exchange") {
    const x = snap.x[name];
    return x ? `${fmtRate(x.rate)} · ${fmtNum(x.published)} in` : "";
  }
  const c = snap.c[name];
  return c ? `${fmtRate(c.rate)} · ${fmtNum(c.errors)} errors` : "";
}

export class FlowGraph {
  constructor(data, { onOpen }) {
    this.data = data;
    this.onOpen = onOpen;
    this.view = { x: 0, y: 0, k: 1 };
    const { pos, heads, width, height } = layout(data.nodes, data.edges);
    this.size = { width, height };
    this.pos = pos;
    this.metricEls = new Map();
    this.nodeEls = new Map();
    this.edgeEls = [];
    this.el = svg("svg", { class: "flow", role: "img", "aria-label": "flow graph" });
    this.stage = svg("g", {});
    this.el.appendChild(this.stage);
    for (const head of heads) {
      this.stage.appendChild(svg("text", { x: head.x, y: PAD, class: "col-head" }, HEADINGS[head.col]));
    }
    const showLabels = data.edges.length <= 80;
    const edgeLayer = svg("g", { class: "edges" });
    for (const e of data.edges) {
      const a = pos.get(e.source), b = pos.get(e.target);
      if (!a || !b) continue;
      const forward = b.x > a.x;
      const x1 = forward ? a.x + W : a.x, y1 = a.y + H / 2;
      const x2 = forward ? b.x : b.x + W, y2 = b.y + H / 2;
      const bend = Math.max(40, Math.abs(x2 - x1) / 2) * (forward ? 1 : -1);
      const d = b.x === a.x
        ? `M${a.x + W},${y1} C${a.x + W + 60},${y1} ${b.x + W + 60},${y2} ${b.x + W},${y2}`
        : `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
      const path = svg("path", { d, class: "edge" + (e.dashed ? " dashed" : ""), "marker-end": "url(#arrow)" },
        svg("title", {}, e.label ? `${e.label}` : ""));
      edgeLayer.appendChild(path);
      let label = null;
      if (showLabels && e.label && !e.dashed && forward) {
        // near the source end, where edges of one node have not yet converged
        label = svg("text", { x: x1 + 8, y: y1 + (y2 - y1) * 0.1 - 4, class: "edge-label" }, short(e.label, 18));
        edgeLayer.appendChild(label);
      }
      this.edgeEls.push({ e, path, label });
    }
    // one node's labels keep a line apart (edges to close targets leave at close angles)
    const bySource = new Map();
    for (const { e, label } of this.edgeEls) {
      if (!label) continue;
      if (!bySource.has(e.source)) bySource.set(e.source, []);
      bySource.get(e.source).push(label);
    }
    for (const labels of bySource.values()) {
      labels.sort((p, q) => Number(p.getAttribute("y")) - Number(q.getAttribute("y")));
      for (let i = 1; i < labels.length; i++) {
        const prev = Number(labels[i - 1].getAttribute("y"));
        if (Number(labels[i].getAttribute("y")) < prev + 17) labels[i].setAttribute("y", String(prev + 17));
      }
    }
    const defs = svg("defs", {}, svg("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7",
      orient: "auto-start-reverse",
    }, svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" })));
    this.el.appendChild(defs);
    this.stage.appendChild(edgeLayer);
    const nodeLayer = svg("g", { class: "nodes" });
    for (const n of data.nodes) {
      const p = pos.get(n.id);
      const m = svg("text", { x: p.x + 10, y: p.y + 36, class: "node-metric" }, "");
      const g = svg("g", {
        class: `node ${n.kind}${n.dlq ? " dlq" : ""}`, transform: `translate(0,0)`,
        "data-name": n.name, "data-kind": n.kind, tabindex: "0",
        onclick: () => this.onOpen(n),
        onkeydown: (ev) => { if (ev.key === "Enter") this.onOpen(n); },
      },
      svg("title", {}, `${n.kind}: ${n.label}`),
      svg("rect", { x: p.x, y: p.y, width: W, height: H, rx: 7 }),
      svg("text", { x: p.x + 10, y: p.y + 18, class: "node-name" }, short(n.label, 30)),
      m);
      this.metricEls.set(n.id, m);
      this.nodeEls.set(n.id, g);
      nodeLayer.appendChild(g);
    }
    this.stage.appendChild(nodeLayer);
    this.installZoom();
  }

  update(snap) {
    for (const n of this.data.nodes) {
      const el = this.metricEls.get(n.id);
      const text = metric(n, snap);
      if (el.textContent !== text) el.textContent = text;
    }
  }

  filter(text) {
    const q = text.trim().toLowerCase();
    const match = new Set();
    if (q) for (const n of this.data.nodes) if (n.name.toLowerCase().includes(q)) match.add(n.id);
    const near = new Set(match);
    if (q) for (const { e } of this.edgeEls) {
      if (match.has(e.source)) near.add(e.target);
      if (match.has(e.target)) near.add(e.source);
    }
    for (const [id, g] of this.nodeEls) {
      g.classList.toggle("match", match.has(id));
      g.classList.toggle("dim", !!q && !near.has(id));
    }
    for (const { e, path, label } of this.edgeEls) {
      const on = !q || match.has(e.source) || match.has(e.target);
      path.classList.toggle("dim", !on);
      if (label) label.classList.toggle("dim", !on);
    }
    return match;
  }

  apply() {
    const { x, y, k } = this.view;
    this.stage.setAttribute("transform", `translate(${x},${y}) scale(${k})`);
  }

  zoomBy(factor, cx, cy) {
    const r = this.el.getBoundingClientRect();
    const px = cx === undefined ? r.width / 2 : cx, py = cy === undefined ? r.height / 2 : cy;
    const k = Math.min(4, Math.max(0.05, this.view.k * factor));
    const f = k / this.view.k;
    this.view = { k, x: px - (px - this.view.x) * f, y: py - (py - this.view.y) * f };
    this.apply();
  }

  fit(ids) {
    const r = this.el.getBoundingClientRect();
    let box = { x0: 0, y0: 0, x1: this.size.width, y1: this.size.height };
    if (ids && ids.size) {
      box = { x0: Infinity, y0: Infinity, x1: -Infinity, y1: -Infinity };
      for (const id of ids) {
        const p = this.pos.get(id);
        box = { x0: Math.min(box.x0, p.x - PAD), y0: Math.min(box.y0, p.y - PAD),
          x1: Math.max(box.x1, p.x + W + PAD), y1: Math.max(box.y1, p.y + H + PAD) };
      }
    }
    const w = Math.max(1, r.width), hgt = Math.max(1, r.height);
    const k = Math.min(1.5, Math.max(0.05, Math.min(w / (box.x1 - box.x0), hgt / (box.y1 - box.y0))));
    this.view = { k, x: (w - (box.x1 - box.x0) * k) / 2 - box.x0 * k, y: 10 - box.y0 * k };
    this.apply();
  }

  installZoom() {
    this.el.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = this.el.getBoundingClientRect();
      this.zoomBy(ev.deltaY < 0 ? 1.15 : 1 / 1.15, ev.clientX - r.left, ev.clientY - r.top);
    }, { passive: false });
    let drag = null;
    this.el.addEventListener("pointerdown", (ev) => {
      if (ev.target.closest(".node")) return;
      drag = { x: ev.clientX, y: ev.clientY, vx: this.view.x, vy: this.view.y };
      this.el.setPointerCapture(ev.pointerId);
      this.el.classList.add("dragging");
    });
    this.el.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      this.view.x = drag.vx + ev.clientX - drag.x;
      this.view.y = drag.vy + ev.clientY - drag.y;
      this.apply();
    });
    const end = () => { drag = null; this.el.classList.remove("dragging"); };
    this.el.addEventListener("pointerup", end);
    this.el.addEventListener("pointercancel", end);
  }
}
