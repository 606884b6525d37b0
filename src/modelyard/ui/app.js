// modelyard operator UI: one page, no build step, no dependency. Every piece of data comes from the
// admin API (/admin/*, /spend/*, /key/*) with the master key as a Bearer header (kept in this tab's
// sessionStorage); no cookie is used, so a cross-site page cannot act on the operator's behalf.
"use strict";

const KEY_STORE = "modelyard.master_key";
const POLL_MS = { models: 2000, traffic: 1000, routing: 3000 };
const state = { key: sessionStorage.getItem(KEY_STORE), tab: null, timer: null, spark: new Map(), keysEnabled: true };

// --- DOM helpers (data is always set as text, never parsed as HTML) ----------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const $ = (sel) => document.querySelector(sel);
const num = (v, attrs) => h("td", { class: "num", ...(attrs || {}) }, v);

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v >= 100 ? 0 : 1)) + " " + units[i];
}
const secs = (s) => (s === null || s === undefined ? "–" : s < 1 ? (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms" : s.toFixed(2) + " s");
const rate = (v, d = 2) => (v === null || v === undefined ? "–" : v.toFixed(d));
const pct = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %");
const money = (s) => (s === null || s === undefined ? "–" : "$" + Number(s).toFixed(Number(s) < 1 ? 6 : 2));

// --- the API -----------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || "HTTP " + status);
    this.status = status;
    this.code = e.code;
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.key) headers.authorization = "Bearer " + state.key;
  if (options.body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(path, {
    method: options.method || "GET", headers, credentials: "omit", cache: "no-store",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

function banner(text) {
  const b = $("#banner");
  b.textContent = text || "";
  b.hidden = !text;
}

// --- sign-in -----------------------------------------------------------------------------------
async function boot() {
  const auth = await api("/ui/auth.json");
  if (auth.master_key && !state.key) return showSignIn("");
  try {
    await api("/admin/traffic");
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      forget();
      return showSignIn(auth.master_key ? "Refused: " + err.message : err.message);
    }
    throw err;
  }
  showApp(auth.master_key);
}

function showSignIn(message) {
  $("#signin").hidden = false;
  $("#tabs").hidden = true;
  $("#signout").hidden = true;
  $("#whoami").textContent = "signed out";
  document.querySelectorAll(".page").forEach((p) => { p.hidden = true; });
  $("#signin-error").textContent = message;
  $("#signin-key").focus();
}

function forget() {
  state.key = null;
  sessionStorage.removeItem(KEY_STORE);
}

async function signIn(ev) {
  ev.preventDefault();
  const key = $("#signin-key").value.trim();
  if (!key) return;
  state.key = key;
  try {
    await api("/admin/traffic");
  } catch (err) {
    forget();
    $("#signin-error").textContent = "Refused: " + err.message;
    return;
  }
  sessionStorage.setItem(KEY_STORE, key);
  $("#signin-key").value = "";
  showApp(true);
}

function showApp(withKey) {
  $("#signin").hidden = true;
  $("#tabs").hidden = false;
  $("#signout").hidden = !withKey;
  $("#whoami").textContent = withKey ? "master key" : "loopback (no master key configured)";
  route();
}

// --- tabs and polling --------------------------------------------------------------------------
const PAGES = { models: loadModels, traffic: loadTraffic, spend: loadSpend, routing: loadRouting, keys: loadKeys };

function route() {
  if (!$("#signin").hidden) return;
  const tab = (location.hash || "#models").slice(1);
  state.tab = PAGES[tab] ? tab : "models";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.dataset.tab === state.tab));
  document.querySelectorAll(".page").forEach((p) => { p.hidden = p.id !== "page-" + state.tab; });
  clearTimeout(state.timer);
  tick();
}

async function tick() {
  const tab = state.tab;
  try {
    await PAGES[tab]();
    banner("");
  } catch (err) {
    if (err.status === 401) { forget(); return showSignIn("Signed out: " + err.message); }
    banner(err.message);
  }
  if (tab === state.tab && POLL_MS[tab]) state.timer = setTimeout(tick, POLL_MS[tab]);
}

// --- confirmation ------------------------------------------------------------------------------
function confirmAction(text) {
  const dlg = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.returnValue = "";
    dlg.showModal();
  });
}

async function act(model, action, label, body) {
  if (!(await confirmAction(`${label} ${model}?`))) return;
  try {
    await api(`/admin/models/${encodeURIComponent(model)}/${action}`, { method: "POST", body });
    banner("");
  } catch (err) {
    banner(`${label} ${model} failed: ${err.message}`);
  }
  if (state.tab === "models") { clearTimeout(state.timer); tick(); }
}

// --- Models ------------------------------------------------------------------------------------
const COLORS = ["#1f6feb", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4", "#bc4c00", "#57606a"];

function budgetBar(tier, mem, models) {
  const used = mem.used_bytes || 0;
  const budget = mem.budget_bytes;
  const scale = budget || Math.max(used, 1);
  const bar = h("div", { class: "bar", title: `${bytes(used)} of ${budget ? bytes(budget) : "no budget"}` });
  const legend = h("div", { class: "legend" });
  models.forEach((m, i) => {
    const b = (m.accounted || {})[tier] || 0;
    if (!b) return;
    const color = COLORS[i % COLORS.length];
    const seg = h("div", { class: "seg", title: `${m.name}: ${bytes(b)}` });
    seg.style.width = Math.min(100, (100 * b) / scale) + "%";
    seg.style.background = color;
    bar.append(seg);
    const sw = h("i");
    sw.style.background = color;
    legend.append(h("span", {}, sw, `${m.name} ${bytes(b)}`));
  });
  const share = budget ? ` (${((100 * used) / budget).toFixed(0)} %)` : "";
  return h("div", { class: "budget", "data-tier": tier },
    h("div", { class: "label" }, `${tier} tier${tier === "active" ? " (execution device)" : " (CPU RAM)"}: ${bytes(used)} of ${budget ? bytes(budget) : "unbounded"}${share}`),
    bar, legend);
}

function actionButtons(m) {
  const b = (label, action, body) => h("button", { type: "button", "data-action": action + (body ? "-" + body.to : ""),
    onclick: () => act(m.name, action, label, body) }, label);
  const out = [];
  if (m.tier !== "active") out.push(b("Load", "load"));
  if (m.tier === "active" && !m.pinned) out.push(b("Demote to host", "demote", { to: "host" }));
  if (m.tier !== "disk" && !m.pinned) out.push(b("Unload", "unload"));
  out.push(m.pinned ? b("Unpin", "unpin") : b("Pin", "pin"));
  return out;
}

async function loadModels() {
  let data;
  try {
    data = await api("/admin/models");
  } catch (err) {
    if (err.status === 404) {
      $("#models-table").hidden = true;
      $("#models-empty").hidden = false;
      $("#models-empty").textContent = err.message;
      return;
    }
    throw err;
  }
  const models = data.data || [];
  $("#models-table").hidden = false;
  $("#models-empty").hidden = true;
  $("#budgets").replaceChildren(...Object.entries(data.memory || {}).map(([tier, mem]) => budgetBar(tier, mem, models)));
  const rows = models.map((m) => {
    const by = m.bytes || {};
    const e = m.engine;
    return h("tr", { "data-model": m.name },
      h("td", { class: "name" }, m.name, m.pinned ? h("span", { class: "pin" }, "pinned") : null),
      h("td", { class: "tier" }, h("span", { class: "badge badge-" + m.tier }, m.tier)),
      h("td", { class: "state" }, m.state, m.ready_in_s ? ` (load ≈ ${m.ready_in_s.toFixed(1)} s)` : ""),
      num(by.active ? `${bytes(by.active)} = ${bytes(by.weights)} / ${bytes(by.kv_cache)} / ${bytes(by.overhead)}` : "–"),
      num(by.host ? bytes(by.host) : "–"),
      num(m.loads, { class: "num loads" }), num(m.demotions, { class: "num demotions" }),
      num(m.in_flight + (m.waiting ? ` (+${m.waiting} waiting)` : ""), { class: "num in-flight" }),
      h("td", {}, e ? `${e.pid || "–"} / ${e.restarts ?? 0}${e.state ? " " + e.state : ""}` : "in-process"),
      h("td", { class: "error" }, m.error || ""),
      h("td", { class: "actions" }, actionButtons(m)));
  });
  $("#models-table tbody").replaceChildren(...rows);
  $("#models-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

// --- Traffic -----------------------------------------------------------------------------------
function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg";
  const w = 120, hgt = 22;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", hgt);
  const max = Math.max(...values, 0.001);
  const pts = values.map((v, i) => `${(i * w) / Math.max(values.length - 1, 1)},${hgt - 1 - (v / max) * (hgt - 2)}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#1f6feb");
  line.setAttribute("stroke-width", "1.5");
  svg.append(line);
  return svg;
}

async function loadTraffic() {
  const data = await api("/admin/traffic");
  $("#traffic-window").textContent = data.window_s ? `over the last ${data.window_s.toFixed(1)} s` : "(collecting…)";
  const rows = data.data.map((r) => {
    const hist = state.spark.get(r.model) || [];
    hist.push(r.rps || 0);
    if (hist.length > 60) hist.shift();
    state.spark.set(r.model, hist);
    return h("tr", { "data-model": r.model },
      h("td", {}, r.model), num(rate(r.rps), { class: "num rps" }), h("td", {}, sparkline(hist)),
      num(pct(r.error_rate), { class: "num error-rate" }), num(secs(r.p50_latency_s)), num(secs(r.p99_latency_s)),
      num(secs(r.p50_ttft_s)), num(secs(r.p99_ttft_s)),
      num(`${rate(r.tokens_in_per_s, 1)} / ${rate(r.tokens_out_per_s, 1)}`),
      num(r.in_flight, { class: "num in-flight" }), num(r.queue_depth), num(r.requests_total, { class: "num total" }));
  });
  $("#traffic-table tbody").replaceChildren(...rows);
}

// --- Spend -------------------------------------------------------------------------------------
function spendTable(group, rows) {
  const head = h("tr", {}, h("th", {}, group === "key_hash" ? "key" : group), h("th", { class: "num" }, "requests"),
    h("th", { class: "num" }, "errors"), h("th", { class: "num" }, "tokens in / out"), h("th", { class: "num" }, "cost"),
    h("th", { class: "num" }, "cost / success"));
  const body = rows.map((r) => h("tr", {}, h("td", {}, r.group[group] ?? "(none)"), num(r.requests),
    num(`${r.errors} (${pct(r.error_rate)})`), num(`${r.prompt_tokens} / ${r.completion_tokens}`), num(money(r.cost)),
    num(money(r.cost_per_success))));
  return [h("thead", {}, head), h("tbody", {}, body.length ? body : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no spend in this range")))];
}

async function loadSpend() {
  const days = Number($("#spend-days").value);
  const until = new Date();
  const since = new Date(until.getTime() - days * 86400000);
  const q = `since=${encodeURIComponent(since.toISOString())}&until=${encodeURIComponent(until.toISOString())}`;
  const groups = ["model", "team", "key_hash", "day"];
  const t0 = performance.now();
  let reports;
  try {
    // by key: only the top 20 by cost (the server sorts and cuts: 2,000 keys would be ~410 KiB)
    reports = await Promise.all(groups.map((g) => api(`/spend/report?group_by=${g}&${q}${g === "key_hash" ? "&limit=20" : ""}`)));
  } catch (err) {
    if (err.status === 404 || err.status === 503) {
      $("#spend-error").hidden = false;
      $("#spend-error").textContent = err.message;
      return;
    }
    throw err;
  }
  $("#spend-error").hidden = true;
  $("#spend-took").textContent = `loaded in ${(performance.now() - t0).toFixed(0)} ms`;
  groups.forEach((g, i) => {
    let rows = reports[i].data;
    if (g === "key_hash") rows = rows.sort((a, b) => Number(b.cost) - Number(a.cost)).slice(0, 20);
    if (g === "model" || g === "team") rows = rows.sort((a, b) => Number(b.cost) - Number(a.cost));
    $("#spend-" + g).replaceChildren(...spendTable(g, rows));
  });
  const byDay = reports[3].data;
  const max = Math.max(...byDay.map((r) => Number(r.cost)), 1e-12);
  $("#spend-days-chart").replaceChildren(...byDay.map((r) => {
    const bar = h("div", { title: `${r.group.day}: ${money(r.cost)}, ${r.requests} requests` });
    bar.style.height = Math.max(1, (100 * Number(r.cost)) / max) + "%";
    return bar;
  }));
}

// --- Routing -----------------------------------------------------------------------------------
async function loadRouting() {
  const data = await api("/admin/routing?limit=100");
  const rows = data.data.map((r) => h("tr", {},
    h("td", {}, new Date(r.ts).toLocaleTimeString()), h("td", {}, r.model), h("td", {}, h("code", {}, r.route || "–")),
    h("td", {}, r.hops.map((x, i) => (i ? " → " : "") + x.model + (x.note ? ` (${x.note})` : "")).join("")),
    h("td", {}, r.answered_by || "–"), num(r.status), num(r.latency_ms.toFixed(0) + " ms"), h("td", {}, h("code", {}, r.request_id))));
  $("#routing-table tbody").replaceChildren(...rows);
  $("#routing-empty").hidden = rows.length > 0;
}

// --- Keys --------------------------------------------------------------------------------------
async function loadKeys() {
  let data;
  try {
    data = await api("/key/list");
  } catch (err) {
    if (err.status === 404) {
      $("#keys-disabled").hidden = false;
      $("#keys-disabled").textContent = err.message;
      $("#key-form").hidden = true;
      $("#keys-table").hidden = true;
      return;
    }
    throw err;
  }
  $("#keys-disabled").hidden = true;
  $("#key-form").hidden = false;
  $("#keys-table").hidden = false;
  const rows = (data.keys || []).map((k) => h("tr", { "data-key": k.token },
    h("td", {}, h("code", {}, k.token)), h("td", {}, k.key_alias || ""), h("td", {}, k.team_id || ""),
    h("td", {}, (k.models || []).join(", ") || "all"), num(k.rpm_limit ?? "–"),
    num(`${money(k.spend)} / ${k.max_budget === null || k.max_budget === undefined ? "∞" : money(k.max_budget)}`),
    h("td", {}, k.created_at ? new Date(k.created_at).toLocaleString() : ""),
    h("td", {}, k.revoked ? "revoked" : h("button", { type: "button", class: "revoke", onclick: () => revoke(k) }, "Revoke"))));
  $("#keys-table tbody").replaceChildren(...rows);
}

async function createKey(ev) {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const body = {};
  for (const name of ["key_alias", "team_id"]) if (f.get(name)) body[name] = f.get(name);
  const models = String(f.get("models") || "").split(",").map((s) => s.trim()).filter(Boolean);
  if (models.length) body.models = models;
  if (f.get("rpm_limit")) body.rpm_limit = Number(f.get("rpm_limit"));
  if (f.get("max_budget")) body.max_budget = Number(f.get("max_budget"));
  try {
    const made = await api("/key/generate", { method: "POST", body });
    $("#key-plain").textContent = made.key;
    $("#key-created").hidden = false;
    ev.target.reset();
    banner("");
  } catch (err) {
    banner("Create key failed: " + err.message);
  }
  await loadKeys();
}

async function revoke(k) {
  const name = k.token;
  if (!(await confirmAction(`Revoke key ${name}${k.key_alias ? " (" + k.key_alias + ")" : ""}? Requests with it fail at once.`))) return;
  try {
    await api("/key/delete", { method: "POST", body: { keys: [k.token] } });
    banner("");
  } catch (err) {
    banner("Revoke failed: " + err.message);
  }
  await loadKeys();
}

// --- wiring ------------------------------------------------------------------------------------
window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", () => { forget(); clearTimeout(state.timer); showSignIn(""); });
  $("#key-form").addEventListener("submit", createKey);
  $("#spend-days").addEventListener("change", () => { if (state.tab === "spend") tick(); });
  boot().catch((err) => banner("modelyard UI could not start: " + err.message));
});
