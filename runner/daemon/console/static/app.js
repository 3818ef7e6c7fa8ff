// The console's core: session and login, the API client, the live feed
// (server-sent events), the router, and the DOM helpers every page uses.
// Everything shown is built with DOM calls and text nodes, never innerHTML,
// so message bodies and headers are always rendered as text.

import { pages } from "./pages.js";

const state = {
  csrf: null,
  readOnly: false,
  snapshot: null,
  listeners: new Set(),
  source: null,
  current: null,
  firstRender: true,
  renders: 0,
};

// ------------------------------------------------------------------ DOM helpers

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

// replace the children of `el` (arrays are flattened, strings become text)
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function setText(el, text) {
  const s = String(text);
  if (el.textContent !== s) el.textContent = s;
}

export function fmtNum(n) {
  if (n === null || n === undefined) return "–";
  if (typeof n !== "number") return String(n);
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

export function fmtRate(r) {
  return (r ? fmtNum(r) : "0") + "/s";
}

export function fmtBytes(b) {
  if (!b) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + " " + units[i];
}

export function fmtAge(s) {
  if (!s) return "–";
  if (s < 60) return s.toFixed(0) + "s";
  if (s < 3600) return (s / 60).toFixed(0) + "m";
  if (s < 86400) return (s / 3600).toFixed(1) + "h";
  return (s / 86400).toFixed(1) + "d";
}

export function fmtTime(ms) {
  if (ms === null || ms === undefined) return "–";
  return new Date(ms).toISOString().replace("T", " ").replace("Z", "");
}

export function link(hash, text) {
  return h("a", { href: hash }, text);
}

export function route(...parts) {
  return "#/" + parts.map(encodeURIComponent).join("/");
}

// `rows`: the rows, or a <tbody> the caller keeps to refill (used as it is: a tbody
// inside a tbody is no table section, and the rows lose their columns). A column
// whose first cell is a number (td.num) gets its header aligned with it.
export function table(headers, rows, attrs) {
  const body = rows instanceof HTMLTableSectionElement ? rows : h("tbody", {}, rows);
  const first = body.rows[0];
  const heads = headers.map((t, i) => h("th",
    first && first.cells[i] && first.cells[i].classList.contains("num") ? { class: "num" } : {}, t));
  return h("table", attrs || {}, h("thead", {}, h("tr", {}, heads)), body);
}

// the body of a message or record as text: JSON pretty-printed, bytes as UTF-8
export function payloadText(item, field) {
  if (item[field] !== undefined) return JSON.stringify(item[field], null, 2);
  const b64 = item[field + "_b64"];
  if (b64 === undefined || b64 === null) return "(null)";
  try {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return "base64: " + b64;
  }
}

// ------------------------------------------------------------------ API

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function api(path, body) {
  const init = { credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRF-Token"] = state.csrf || "";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch("/ui/api/" + path, init);
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  if (resp.status === 401) { showLogin(); throw new ApiError(401, data && data.error || "log in"); }
  if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || resp.statusText);
  return data;
}

export function readOnly() { return state.readOnly; }

// ------------------------------------------------------------------ confirmation

export function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

// ------------------------------------------------------------------ live feed

export function onSnapshot(fn) {
  state.listeners.add(fn);
  if (state.snapshot) fn(state.snapshot);
  return () => state.listeners.delete(fn);
}

export function snapshot() { return state.snapshot; }

function connect() {
  if (state.source) state.source.close();
  const live = document.getElementById("live");
  const source = new EventSource("/ui/api/events");
  state.source = source;
  source.addEventListener("snapshot", (ev) => {
    state.snapshot = JSON.parse(ev.data);
    live.className = "live on";
    live.textContent = "live";
    for (const fn of state.listeners) {
      try { fn(state.snapshot); } catch (err) { console.error(err); }
    }
  });
  source.addEventListener("error", () => {
    live.className = "live off";
    live.textContent = "reconnecting";
  });
}

// ------------------------------------------------------------------ session

async function session() {
  const resp = await fetch("/ui/api/session", { credentials: "same-origin" });
  return resp.json();
}

function showLogin() {
  if (state.source) { state.source.close(); state.source = null; }
  document.getElementById("main").hidden = true;
  document.getElementById("nav").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("token").focus();
}

async function login(ev) {
  ev.preventDefault();
  const input = document.getElementById("token");
  const error = document.getElementById("login-error");
  error.textContent = "";
  const resp = await fetch("/ui/api/login", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: input.value }),
  });
  const data = await resp.json().catch(() => ({}));
  input.value = "";
  if (!resp.ok) { error.textContent = data.error || "login failed"; return; }
  start(data);
}

async function logout() {
  await api("logout", {}).catch(() => null);
  location.reload();
}

function start(sess) {
  state.csrf = sess.csrf;
  state.readOnly = !!sess.read_only;
  document.getElementById("mode").hidden = !state.readOnly;
  document.body.classList.toggle("read-only", state.readOnly);
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = !sess.token_required;
  connect();
  render();
}

// ------------------------------------------------------------------ router

async function render() {
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  const parts = (path || "overview").split("/").map(decodeURIComponent);
  const [name, ...args] = parts;
  const page = pages[name] || pages.overview;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === (pages[name] ? name : "overview")
      || (name === "groups" && a.dataset.page === "topics"));
  }
  if (state.current && state.current.stop) state.current.stop();
  state.current = null;
  const main = document.getElementById("main");
  const ticket = ++state.renders;
  try {
    const view = await page(...args);
    if (ticket !== state.renders) {  // another route was asked for meanwhile
      if (view.stop) view.stop();
      return;
    }
    fill(main, view.el);
    state.current = view;
    document.title = (view.title ? view.title + " · " : "") + "topology-runner console";
    if (state.firstRender) {
      state.firstRender = false;
      document.body.dataset.firstRenderMs = String(Math.round(performance.now()));
    }
    document.body.dataset.page = name;
    document.body.dataset.route = path || "overview";
  } catch (err) {
    if (ticket !== state.renders || (err instanceof ApiError && err.status === 401)) return;
    document.body.dataset.page = "error";
    document.body.dataset.route = path;
    fill(main, h("div", { class: "error-box" }, h("h2", {}, "Could not load this page"),
      h("p", {}, String(err.message || err))));
  }
}

async function boot() {
  document.getElementById("login-form").addEventListener("submit", login);
  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", render);
  // a browser holds at most six connections to one host: a page left (or kept in
  // the back-forward cache) must give its event stream back
  window.addEventListener("pagehide", () => { if (state.source) state.source.close(); });
  window.addEventListener("pageshow", (ev) => { if (ev.persisted && state.csrf) connect(); });
  const sess = await session();
  if (!sess.authenticated) showLogin();
  else start(sess);
}

boot();
