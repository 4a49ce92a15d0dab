// paperbus dashboard page: renders what the server pushes over Server-Sent Events
// (/events). It never polls: the server sends a "hello" with everything on connect, then
// one "upd" per change of the state-publisher's view, "link" when the stream goes stale or
// comes back, "status" (heartbeat ages), "runs" and "job" (backtests). EventSource
// reconnects by itself; the last values stay on screen meanwhile, marked.
"use strict";

const CSRF = document.querySelector('meta[name="csrf"]').content;
const S = { state: {}, seq: 0, link: null, status: null, statusError: "", runs: [], jobs: {},
            eq: [], px: {}, fills: [], lastEvent: Date.now(), connected: false };
// Update latency as the page sees it: publisher send time -> painted (ms), for tests and bench.
window.__pb = { lat: [], arrival: [], updates: 0, state: S };

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

// Numbers rendered generically: integers as integers, fractions (quantities like 0.001
// too) with as many decimals as they need, money with two.
// Intl formatters made once: toLocaleString with options builds one per call (the page's
// main cost before).
const NF = new Map();
function nf(min, max) {
  const k = min + ":" + max;
  if (!NF.has(k)) NF.set(k, new Intl.NumberFormat("en-US", { minimumFractionDigits: min, maximumFractionDigits: max }));
  return NF.get(k);
}
function fmt(x, nd) {
  if (x === null || x === undefined) return "-";
  if (typeof x !== "number") return esc(x);
  if (nd === undefined) return Number.isInteger(x) ? nf(0, 0).format(x) : nf(0, 8).format(x);
  return nf(nd, nd).format(x);
}
const money = (x) => fmt(x, 2);
const pct = (x) => (typeof x === "number" ? (x * 100).toFixed(2) + "%" : "-");
const sign = (x) => (typeof x !== "number" || x === 0 ? "" : x > 0 ? "pos" : "neg");
const DAY = new Intl.DateTimeFormat("en-CA", { year: "numeric", month: "2-digit", day: "2-digit" });
const TIME = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
function when(ns) {
  if (!ns) return "-";
  const d = new Date(ns / 1e6);
  return DAY.format(d) + " " + TIME.format(d);
}
function dur(s) {
  if (typeof s !== "number") return "-";
  if (s < 60) return s.toFixed(1) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}
// Writes only what differs: every write to the page costs a layout and a paint, and most
// pushes change a few cells (five tabs on a small machine feel each one).
function setText(el, text) { if (el.textContent !== text) el.textContent = text; }
const lastHTML = new WeakMap();
function setHTML(el, html) { if (lastHTML.get(el) !== html) { el.innerHTML = html; lastHTML.set(el, html); } }
function setNum(el, v, nd) {
  setText(el, nd === undefined ? fmt(v) : fmt(v, nd));
  const val = typeof v === "number" ? String(v) : "";
  if (el.dataset.value !== val) el.dataset.value = val;
}

// ------------------------------------------------------------------ rendering
const KNOWN = new Set(["run_id", "publisher", "actors", "trading", "account", "positions", "orders", "trades",
                       "performance", "market", "instruments", "counters"]);

function renderAll() {
  renderHeader(); renderAccount(); renderPerf(); renderActors(); renderPositions(); renderOrders();
  renderTrades(); renderExtra(); renderControls();
}

function renderKeys(keys) {
  const k = new Set(keys);
  if (k.has("run_id") || k.has("trading")) renderHeader();
  if (k.has("account")) renderAccount();
  if (k.has("performance")) renderPerf();
  if (k.has("actors") || k.has("trading")) { renderActors(); renderControls(); }
  if (k.has("positions")) renderPositions();
  if (k.has("orders")) renderOrders();
  if (k.has("trades")) renderTrades();
  if ([...k].some((x) => !KNOWN.has(x))) renderExtra();
}

function renderHeader() {
  setText($("run-id"), S.state.run_id || "-");
  const t = S.state.trading || {};
  const el = $("trading");
  const st = t.known ? t.state : "unknown";
  setText(el, "trading " + (st || "unknown").toUpperCase());
  const cls = "badge " + (st === "trading" ? "ok" : st === "halted" || st === "failed" ? "bad" : "warn");
  if (el.className !== cls) el.className = cls;
  if (el.dataset.state !== (st || "")) el.dataset.state = st || "";
}

function renderAccount() {
  const a = S.state.account || {};
  for (const k of ["equity", "cash", "realized", "unrealized", "fees", "gross_exposure", "initial_cash"]) {
    const el = $("acct-" + k);
    setNum(el, a[k], 2);
    if (k === "realized" || k === "unrealized") {
      const c = sign(a[k]);
      el.classList.toggle("pos", c === "pos");
      el.classList.toggle("neg", c === "neg");
    }
  }
  setText($("acct-note"), a.known === false ? "no report from the exchange yet" : "");
}

function renderPerf() {
  const p = S.state.performance || {};
  const rows = [["total return", pct(p.total_return)], ["max drawdown", pct(p.max_drawdown)],
                ["drawdown", pct(p.drawdown)], ["peak equity", money(p.peak_equity)],
                ["Sharpe", fmt(p.sharpe === null || p.sharpe === undefined ? null : Number(p.sharpe.toFixed(2)))],
                ["trades (closing fills)", fmt(p.trades)], ["win rate", pct(p.win_rate)],
                ["wins / losses", fmt(p.wins) + " / " + fmt(p.losses)], ["fills", fmt(p.fills)]];
  let html = rows.map(([k, v]) => `<tr><th>${k}</th><td class="num">${v}</td></tr>`).join("");
  if (p.complete === false) html += `<tr><td colspan="2" class="note">figures since the view started (trading happened before)</td></tr>`;
  setHTML($("perf"), html);
}

function actorFlags(name, a, st) {
  // What the operator must see on an actor's row: failed, halted, paused, stale heartbeat.
  const t = S.state.trading || {};
  const hb = st && st.heartbeat_age_s;
  const period = S.status && S.status.heartbeat_ms ? S.status.heartbeat_ms / 1000 : 0.25;
  if (a.state === "failed") return ["failed", "FAILED"];
  if ((name === "paper-exchange" || name === "strategy") && t.halted) return ["halted", "halted"];
  if ((name === "paper-exchange" || name === "strategy") && t.paused) return ["paused", "paused"];
  if (typeof hb === "number" && hb > 3 * period) return ["stale", "heartbeat late"];
  return ["", ""];
}

function renderActors() {
  const actors = S.state.actors || {};
  const status = (S.status && S.status.actors) || {};
  const names = [...new Set([...Object.keys(actors), ...Object.keys(status)])].sort();
  const now = Date.now();
  setHTML($("actors").tBodies[0], names.map((n) => {
    const a = actors[n] || {}, st = status[n] || {};
    const state = st.state || a.state || "?";
    const [cls, note] = actorFlags(n, { ...a, state }, st);
    const up = typeof st.uptime_s === "number" ? st.uptime_s : (state === "running" && a.since_ns ? (now - a.since_ns / 1e6) / 1000 : null);
    const hb = typeof st.heartbeat_age_s === "number" ? st.heartbeat_age_s.toFixed(2) + "s" : "-";
    return `<tr class="${cls ? "hl-" + cls : ""}" data-actor="${esc(n)}"><td>${esc(n)}</td>` +
      `<td class="state-${esc(state)}">${esc(state)}${note ? ", " + esc(note) : ""}</td>` +
      `<td class="num">${esc(st.pid || a.pid || "-")}</td><td class="num">${dur(up)}</td>` +
      `<td class="num">${fmt(st.restarts !== undefined ? st.restarts : a.restarts)}</td><td class="num">${hb}</td>` +
      `<td>${esc(st.detail || a.detail || "")}</td></tr>`;
  }).join(""));
  setText($("status-note"), S.statusError ? "supervisor: " + S.statusError : "");
  const sel = $("restart-actor"), cur = sel.value;
  const opts = names.map((n) => `<option${n === cur ? " selected" : ""}>${esc(n)}</option>`).join("");
  setHTML(sel, opts);
}

function renderPositions() {
  const pos = S.state.positions || {};
  let total = 0, any = false;
  setHTML($("positions").tBodies[0], Object.entries(pos).map(([sym, p]) => {
    if (typeof p.mtm === "number") { total += p.mtm; any = true; }
    return `<tr data-symbol="${esc(sym)}"><td>${esc(sym)}</td><td class="num" data-value="${p.qty}">${fmt(p.qty)}</td>` +
      `<td class="num">${fmt(p.avg_price, 4)}</td><td class="num" data-value="${p.last}">${fmt(p.last, 4)}</td>` +
      `<td class="num ${sign(p.mtm)}" data-value="${p.mtm}">${money(p.mtm)}</td>` +
      `<td class="num">${money(p.market_value)}</td><td class="num ${sign(p.realized)}">${money(p.realized)}</td></tr>`;
  }).join("") || `<tr><td colspan="7" class="note">no open position</td></tr>`);
  const a = S.state.account || {};
  setNum($("total-mtm"), typeof a.unrealized === "number" ? a.unrealized : any ? total : null, 2);
  const syms = Object.keys((S.state.market || {}).last || {});
  const sel = $("price-symbol"), cur = sel.value;
  const opts = syms.map((s) => `<option${s === cur ? " selected" : ""}>${esc(s)}</option>`).join("");
  setHTML(sel, opts);
}

function renderOrders() {
  const orders = S.state.orders || {};
  setHTML($("orders").tBodies[0], Object.entries(orders).map(([id, o]) =>
    `<tr><td>${esc(id)}</td><td>${esc(o.cl_id || "")}</td><td>${esc(o.symbol || "")}</td><td>${esc(o.side || "")}</td>` +
    `<td class="num">${fmt(o.qty)}</td><td class="num">${fmt(o.filled)}</td><td>${esc(o.type || "")}</td>` +
    `<td class="num">${fmt(o.price, 4)}</td><td>${esc(o.status || "")}</td></tr>`).join("") ||
    `<tr><td colspan="9" class="note">no open order</td></tr>`);
}

function renderTrades() {
  const trades = (S.state.trades || []).slice(-20).reverse();
  setHTML($("trades").tBodies[0], trades.map((t) =>
    `<tr><td>${when(t.at_ns)}</td><td>${esc(t.symbol || "")}</td><td>${esc(t.side || "")}</td>` +
    `<td class="num">${fmt(t.qty)}</td><td class="num">${fmt(t.price, 4)}</td>` +
    `<td class="num ${sign(t.realized)}">${money(t.realized)}</td><td class="num">${fmt(t.position)}</td></tr>`).join("") ||
    `<tr><td colspan="7" class="note">no trade yet</td></tr>`);
}

function renderExtra() {
  // Keys this page does not know yet (a newer state view, e.g. feed status): shown as they are.
  const extra = Object.keys(S.state).filter((k) => !KNOWN.has(k));
  $("extra-card").hidden = extra.length === 0;
  $("extra").innerHTML = extra.map((k) => `<h3>${esc(k)}</h3><pre class="logs">${esc(JSON.stringify(S.state[k], null, 1))}</pre>`).join("");
}

function running() { return !!(S.status && S.status.phase); }

function renderControls() {
  const up = running();
  $("btn-start").disabled = false;  // the server answers "already running (pid N)": the lock decides, not the page
  for (const id of ["pause", "resume", "stop-and-close", "halt", "unhalt", "restart", "shutdown"]) $("btn-" + id).disabled = !up;
}

function renderLink() {
  const l = S.link || {};
  const el = $("link"), banner = $("stale-banner");
  const cls = (c) => { if (el.className !== c) el.className = c; };
  const show = (b, on) => { if (b.hidden === on) b.hidden = !on; };
  if (!S.connected) {
    setText(el, "DASHBOARD OFFLINE"); cls("badge bad"); show($("server-banner"), true);
  } else {
    show($("server-banner"), false);
    if (l.stale) {
      const age = l.last_msg_ms ? (Date.now() - l.last_msg_ms) / 1000 : null;
      setText(el, age !== null ? `STALE ${age.toFixed(1)}s` : "STALE");
      cls("badge bad");
      show(banner, true);
      setText(banner, (age !== null
        ? `STALE: no message from the state-publisher for ${age.toFixed(1)}s; the values below are the last received`
        : "STALE: no state-publisher has answered yet") + (l.error ? ` (${l.error})` : "") + "; reconnecting by itself.");
    } else {
      setText(el, "LIVE"); cls("badge ok"); show(banner, false);
    }
  }
  const dim = !!l.stale || !S.connected;
  if (document.body.classList.contains("stale") !== dim) document.body.classList.toggle("stale", dim);
  if (document.body.dataset.stale !== String(!!l.stale)) document.body.dataset.stale = String(!!l.stale);
}

// ------------------------------------------------------------------ charts
let eqChart = null, pxChart = null, chartsDue = false;
function chartSize(el) { return { width: Math.max(300, el.clientWidth - 4), height: 220 }; }
function mkChart(el, series) {
  // Room for "1,000,000.00" on the y axis: equity has large values and small moves.
  const axes = [{ stroke: "#94a3b8", grid: { stroke: "#1e293b" } }, { stroke: "#94a3b8", grid: { stroke: "#1e293b" }, size: 110 }];
  return new uPlot({ ...chartSize(el), series: [{}, ...series], axes, legend: { show: true }, cursor: { drag: { x: true } } },
                   [[], ...series.map(() => [])], el);
}
function fillMarker(up) {
  return { show: true, size: 9, fill: up ? "#22c55e" : "#ef4444", stroke: up ? "#22c55e" : "#ef4444" };
}
function initCharts() {
  eqChart = mkChart($("chart-equity"), [{ label: "equity", stroke: "#3b82f6", width: 2, value: (u, v) => money(v) }]);
  pxChart = mkChart($("chart-price"), [
    { label: "price", stroke: "#eab308", width: 1.5, spanGaps: true },
    { label: "buy", stroke: "#22c55e", paths: () => null, points: fillMarker(true) },
    { label: "sell", stroke: "#ef4444", paths: () => null, points: fillMarker(false) },
  ]);
  window.addEventListener("resize", () => {
    eqChart.setSize(chartSize($("chart-equity"))); pxChart.setSize(chartSize($("chart-price")));
  });
}
function scheduleCharts() {
  if (chartsDue) return;
  chartsDue = true;
  setTimeout(() => requestAnimationFrame(drawCharts), 500);  // at most 2 redraws a second
}
function drawCharts() {
  chartsDue = false;
  if (!eqChart || document.hidden) return;
  eqChart.setData([S.eq.map((p) => p[0]), S.eq.map((p) => p[1])]);
  const sym = $("price-symbol").value;
  const px = S.px[sym] || [];
  const fills = S.fills.filter((f) => f.symbol === sym && typeof f.price === "number");
  const pts = px.map((p) => [p[0], p[1], null, null]).concat(
    fills.map((f) => [f.t, null, f.side === "buy" ? f.price : null, f.side === "sell" ? f.price : null]));
  pts.sort((a, b) => a[0] - b[0]);
  pxChart.setData([pts.map((p) => p[0]), pts.map((p) => p[1]), pts.map((p) => p[2]), pts.map((p) => p[3])]);
}
const SERIES_MAX = 2000;
function addPoint(arr, p) {
  if (arr.length && arr[arr.length - 1][0] === p[0]) arr[arr.length - 1] = p; else arr.push(p);
  if (arr.length > SERIES_MAX) arr.splice(0, arr.length - SERIES_MAX);
}

// ------------------------------------------------------------------ stream
// Pushes are applied to S as they come; the page is drawn once per frame with every key
// that changed since the last one (a fast feed sends more pushes than a screen has frames).
let dirty = new Set(), pendingPub = [], flushDue = false;
function flush() {
  flushDue = false;
  renderKeys([...dirty]);
  dirty.clear();
  if (document.body.dataset.seq !== String(S.seq)) document.body.dataset.seq = String(S.seq);
  // Update latency: publisher send time -> this frame, for every push it shows.
  const now = Date.now(), lat = window.__pb.lat;
  for (const p of pendingPub) lat.push(now - p);
  pendingPub = [];
  if (lat.length > 10000) lat.splice(0, lat.length - 10000);
}

function onMessage(m) {
  S.lastEvent = Date.now();
  if (!S.connected) { S.connected = true; renderLink(); }
  switch (m.t) {
    case "hello":
      S.state = m.state || {}; S.seq = m.seq;
      S.eq = m.series.eq || []; S.px = m.series.px || {}; S.fills = m.series.fills || [];
      S.link = m.link; S.status = m.status.status; S.statusError = m.status.error;
      S.runs = m.runs || []; S.jobs = {};
      for (const j of m.jobs || []) S.jobs[j.id] = j;
      renderAll(); renderLink(); renderRuns(); renderJobs(); scheduleCharts();
      break;
    case "upd": {
      Object.assign(S.state, m.keys);
      for (const k of m.gone || []) delete S.state[k];
      if (m.trades_add) {
        // Only the new fills come; the list keeps the publisher's length.
        const t = (S.state.trades || []).concat(m.trades_add);
        S.state.trades = t.slice(Math.max(0, t.length - m.trades_len));
        dirty.add("trades");
      }
      S.seq = m.seq;
      for (const k of Object.keys(m.keys).concat(m.gone || [])) dirty.add(k);
      if (m.pts) {
        if (m.pts.eq) addPoint(S.eq, m.pts.eq);
        for (const [s, p] of Object.entries(m.pts.px || {})) addPoint(S.px[s] || (S.px[s] = []), p);
        for (const f of m.pts.fills || []) { S.fills.push(f); if (S.fills.length > 500) S.fills.shift(); }
        scheduleCharts();
      }
      if (typeof m.pub_ms === "number") {
        if (pendingPub.length < 1000) pendingPub.push(m.pub_ms);
        const arr = window.__pb.arrival;  // publisher send -> this push received (before drawing)
        arr.push(Date.now() - m.pub_ms);
        if (arr.length > 10000) arr.splice(0, arr.length - 10000);
      }
      window.__pb.updates++;
      if (!flushDue) { flushDue = true; requestAnimationFrame(flush); }
      return;
    }
    case "link":
      S.link = m; renderLink(); renderHeader(); break;
    case "status":
      S.status = m.status; S.statusError = m.error; renderActors(); renderControls(); break;
    case "runs":
      S.runs = m.runs; renderRuns(); break;
    case "job":
      S.jobs[m.job.id] = m.job; renderJobs(); break;
    case "ping":
      break;
  }
  document.body.dataset.seq = String(S.seq);
}

function connect() {
  const es = new EventSource("/events");
  es.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  es.onerror = () => { S.connected = false; renderLink(); };  // EventSource retries by itself
}

setInterval(() => {
  // The ages tick here, between pushes; a silent server (no ping for 3 periods) is shown.
  setText($("clock"), new Date().toLocaleString("en-GB").slice(0, 20));
  if (S.connected && Date.now() - S.lastEvent > 6000) S.connected = false;
  renderLink();
}, 250);

// ------------------------------------------------------------------ actions
function ask(title, text) {
  const d = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    d.onclose = () => resolve(d.returnValue === "ok");
    d.returnValue = "";
    d.showModal();
  });
}

async function post(url, body) {
  let r;
  try {
    r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
                           body: JSON.stringify(body), credentials: "same-origin" });
  } catch (e) {
    return { ok: false, error: "the dashboard server does not answer: " + e };
  }
  try { return await r.json(); } catch (e) { return { ok: false, error: `HTTP ${r.status}` }; }
}

function showReply(el, rep) {
  el.hidden = false;
  el.className = "reply " + (rep.ok ? "ok" : "err");
  el.textContent = rep.ok ? rep.message || "ok" : "refused: " + (rep.error || "unknown error");
}

const CONFIRM = {
  start: "Start a supervisor on config %s? It runs detached from this page.",
  pause: "Pause trading? The strategy and the exchange stop taking new orders.",
  resume: "Resume trading?",
  "stop-and-close": "Stop & Close? Trading pauses and every position is flattened.",
  halt: "HALT (kill switch)? Every open order is cancelled and new ones are rejected.",
  unhalt: "Lift the halt? Trading stays paused until Resume.",
  restart: "Restart actor %s?",
  shutdown: "Shut down the whole system (every actor, then the supervisor)?",
};

for (const btn of document.querySelectorAll("button[data-cmd]")) {
  btn.addEventListener("click", async () => {
    const cmd = btn.dataset.cmd;
    const arg = cmd === "start" ? $("start-config").value : cmd === "restart" ? $("restart-actor").value : "";
    if (!(await ask(btn.textContent, CONFIRM[cmd].replace("%s", arg)))) return;
    showReply($("reply"), { ok: true, message: `${cmd}: sent...` });
    showReply($("reply"), await post("/api/control", { cmd, arg }));
  });
}

for (const t of document.querySelectorAll(".tab")) {
  t.addEventListener("click", () => {
    for (const x of document.querySelectorAll(".tab")) x.classList.toggle("active", x === t);
    for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + t.dataset.tab;
    if (t.dataset.tab === "live") { eqChart.setSize(chartSize($("chart-equity"))); pxChart.setSize(chartSize($("chart-price"))); scheduleCharts(); }
  });
}
$("price-symbol").addEventListener("change", drawCharts);

// ------------------------------------------------------------------ runs
let logsRun = "";
function renderRuns() {
  const selected = new Set([...document.querySelectorAll("#runs input:checked")].map((x) => x.value));
  $("runs").tBodies[0].innerHTML = S.runs.map((r) =>
    `<tr data-run="${esc(r.run_id)}"><td>${r.deletable ? `<input type="checkbox" value="${esc(r.run_id)}"${selected.has(r.run_id) ? " checked" : ""}>` : ""}</td>` +
    `<td>${esc(r.run_id)}</td><td>${esc(r.kind)}</td><td>${esc(r.start || "-")}</td>` +
    `<td>${esc(r.end || (r.running ? "running" : "-"))}</td><td class="num">${fmt(r.exit_code)}</td>` +
    `<td class="num">${fmt(r.fills)}</td><td class="num">${money(r.final_equity)}</td>` +
    `<td>${r.running ? '<span class="badge ok">running</span>' : esc(r.keep && !r.deletable ? r.keep : "")}</td>` +
    `<td><button class="logs-btn" data-run="${esc(r.run_id)}">logs</button></td></tr>`).join("") ||
    `<tr><td colspan="10" class="note">no runs yet</td></tr>`;
  for (const b of document.querySelectorAll(".logs-btn")) b.onclick = () => { logsRun = b.dataset.run; loadLogs(); };
  const bts = S.runs.filter((r) => r.kind === "backtest" && !r.running);
  for (const [id, blank] of [["bt-a", false], ["bt-b", true]]) {
    const sel = $(id), cur = sel.value;
    const opts = (blank ? '<option value="">(none)</option>' : "") +
      bts.map((r) => `<option value="${esc(r.run_id)}"${r.run_id === cur ? " selected" : ""}>${esc(r.run_id)}</option>`).join("");
    setHTML(sel, opts);
  }
}

async function loadLogs() {
  const q = new URLSearchParams({ run_id: logsRun, process: $("logs-process").value, level: $("logs-level").value, n: $("logs-n").value });
  $("logs-run").textContent = logsRun || "(current run directory)";
  const r = await fetch("/api/logs?" + q);
  const d = await r.json();
  if (!r.ok) { $("logs").textContent = "refused: " + d.error; return; }
  const sel = $("logs-process"), cur = sel.value;
  sel.innerHTML = '<option value="">all</option>' + d.processes.map((p) => `<option${p === cur ? " selected" : ""}>${esc(p)}</option>`).join("");
  const skip = new Set(["event", "level", "timestamp", "process", "run_id", "pid"]);
  $("logs").innerHTML = d.events.map((e) => {
    const kv = Object.entries(e).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
    return `<span class="lv-${esc(e.level)}">${esc((e.timestamp || "").slice(0, 23))} ${esc(e.level)} ${esc(e.process)}: ${esc(e.event)} ${esc(kv)}</span>`;
  }).join("\n") || "(no lines)";
}
$("btn-logs").addEventListener("click", loadLogs);

$("btn-delete").addEventListener("click", async () => {
  const ids = [...document.querySelectorAll("#runs input:checked")].map((x) => x.value);
  const reply = $("reply");
  if (!ids.length) { showReply(reply, { ok: false, error: "select the runs to delete first" }); return; }
  const plan = await post("/api/runs/plan", { run_ids: ids });
  if (!plan.ok) { alertReply(plan); return; }
  const text = "This deletes, for good:\n" + plan.runs.map((p) => `${p.dir}: ${p.files.join(", ")}`).join("\n");
  if (!(await ask(`Delete ${ids.length} run(s)`, text))) return;
  alertReply(await post("/api/runs/delete", { plan: { runs: plan.runs }, confirm: true }));
});
function alertReply(rep) {
  const el = $("runs-reply") || (() => { const d = document.createElement("div"); d.id = "runs-reply"; $("runs").before(d); return d; })();
  showReply(el, rep);
}

// ------------------------------------------------------------------ backtests
function renderJobs() {
  const jobs = Object.values(S.jobs).sort((a, b) => b.started - a.started);
  $("jobs").tBodies[0].innerHTML = jobs.map((j) => {
    const frac = j.total ? j.done / j.total : j.state === "finished" ? 1 : 0;
    return `<tr data-job="${esc(j.id)}"><td>${j.pid}</td><td>${esc(j.config)}</td><td>${esc(j.sets.join(" "))}</td>` +
      `<td><span class="progress"><div style="width:${(frac * 100).toFixed(1)}%"></div></span> ${fmt(j.done)}/${fmt(j.total)}</td>` +
      `<td>${esc(j.state)}${j.error ? ": " + esc(j.error) : ""}</td><td>${esc(j.run_id || "-")}</td></tr>`;
  }).join("") || `<tr><td colspan="6" class="note">none started from this page</td></tr>`;
}

$("btn-backtest").addEventListener("click", async () => {
  const params = {};
  for (const line of $("bt-params").value.split("\n")) {
    const i = line.indexOf("=");
    if (line.trim() && i > 0) params[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  let el = $("bt-reply");
  if (!el) { el = document.createElement("div"); el.id = "bt-reply"; $("jobs").before(el); }
  showReply(el, await post("/api/backtest", { config: $("bt-config").value, params }));
});

async function showResult(runId, slot) {
  const r = await fetch("/api/backtest/" + encodeURIComponent(runId));
  const d = await r.json();
  if (!r.ok) { slot.innerHTML = `<p class="reply err">${esc(d.error)}</p>`; return; }
  const s = d.summary || {};
  // ns timestamps have an ISO twin beside them: the page shows the ISO one.
  const cols = d.columns.filter((c) => !c.endsWith("_ts"));
  const rows = Object.entries(s).filter(([k, v]) => (typeof v !== "object" || v === null) && !k.endsWith("_ts"))
    .map(([k, v]) => `<tr><th>${esc(k)}</th><td class="num">${typeof v === "number" ? fmt(Number(v.toPrecision(10))) : v === null ? "-" : esc(v)}</td></tr>`).join("");
  slot.innerHTML = `<h2>${esc(runId)}</h2><table class="kv">${rows}</table><div class="chart bt-eq"></div><div class="chart bt-dd"></div>` +
    `<h2>Trades (${d.trades.length})</h2><div style="max-height:300px;overflow:auto"><table class="rows"><thead><tr>` +
    cols.map((c) => `<th>${esc(c)}</th>`).join("") + `</tr></thead><tbody>` +
    d.trades.map((t) => "<tr>" + cols.map((c) => `<td class="${typeof t[c] === "number" ? "num" : ""}">${typeof t[c] === "number" ? fmt(t[c]) : esc(t[c])}</td>`).join("") + "</tr>").join("") +
    `</tbody></table></div>`;
  const xs = d.equity.map((p) => p[0]);
  const w = Math.max(300, slot.clientWidth - 30);
  const axes = [{ stroke: "#94a3b8", grid: { stroke: "#1e293b" } }, { stroke: "#94a3b8", grid: { stroke: "#1e293b" }, size: 80 }];
  const sync = uPlot.sync("bt-" + runId);
  new uPlot({ width: w, height: 200, series: [{}, { label: "equity", stroke: "#3b82f6", width: 1.5 }], axes, cursor: { sync: { key: sync.key } } },
            [xs, d.equity.map((p) => p[1])], slot.querySelector(".bt-eq"));
  new uPlot({ width: w, height: 120, series: [{}, { label: "drawdown %", stroke: "#ef4444", fill: "rgba(239,68,68,.25)", width: 1 }], axes, cursor: { sync: { key: sync.key } } },
            [xs, d.equity.map((p) => p[2] * 100)], slot.querySelector(".bt-dd"));
}

$("btn-compare").addEventListener("click", async () => {
  const host = $("bt-results");
  host.innerHTML = "";
  for (const id of [$("bt-a").value, $("bt-b").value].filter(Boolean)) {
    const slot = document.createElement("div");
    slot.className = "card bt-result";
    slot.dataset.run = id;
    host.appendChild(slot);
    await showResult(id, slot);
  }
});

// ------------------------------------------------------------------ start
async function loadConfigs() {
  const r = await fetch("/api/configs");
  const cfgs = await r.json();
  const live = Object.entries(cfgs).filter(([, c]) => c.mode === "live").map(([n]) => n);
  const bt = Object.entries(cfgs).filter(([, c]) => c.mode === "backtest").map(([n]) => n);
  $("start-config").innerHTML = live.map((n) => `<option${n === "default" ? " selected" : ""}>${esc(n)}</option>`).join("");
  $("bt-config").innerHTML = bt.map((n) => `<option>${esc(n)}</option>`).join("");
}

initCharts();
renderAll();
renderLink();
loadConfigs();
connect();
