// imqd dashboard: live link totals, the class tree, workers, and class editing through the REST API.
// One server-sent-events stream (GET /stats/stream) feeds everything; it carries the top classes by rate
// and the rows on screen (watch=), so the page stays light with 10,000 classes (virtual scrolling).
"use strict";

const HISTORY_POINTS = 120;          // 60 s of samples at 0.5 s
const STREAM_TOP = 50;               // classes per direction the stream always sends (top by rate)
const ROW_HEIGHT = 30;
const FORM_FIELDS = ["name", "direction", "parent", "rate", "ceil", "prio", "default",
                     "match.src", "match.dst", "match.proto", "match.dport"];

const state = {
  classes: [], byName: new Map(),    // from GET /classes
  live: new Map(),                   // name -> latest stats entry seen in the stream
  top: new Set(),                    // the classes of the stream's latest top lists
  spark: new Map(),                  // name -> recent rates (bit/s), for the rows' sparklines
  dir: "egress", search: "", sort: "rate_bps", asc: false,
  view: [], watch: [], selected: null, editing: null,
  token: sessionStorage.getItem("imqd-token"), changes: null, enabled: true,
  chart: null, chartData: [[], [], []], stream: null, streamKey: "",
};
window.imqdPerf = { updates: 0, lastUpdateMs: 0, maxUpdateMs: 0, firstRowsAt: null };

const $ = (sel) => document.querySelector(sel);

// -- formatting ------------------------------------------------------------------------
function rate(bps) {
  if (bps == null) return "–";
  const u = [[1e9, "Gbit/s"], [1e6, "Mbit/s"], [1e3, "kbit/s"]];
  for (const [f, n] of u) if (bps >= f) return (bps / f).toFixed(bps >= 100 * f ? 0 : 1) + " " + n;
  return Math.round(bps) + " bit/s";
}
function count(n) {
  if (n == null) return "–";
  if (n >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return String(n);
}
function tcRate(bps) {  // how an operator writes it: 20000000 -> "20mbit"
  for (const [f, u] of [[1e9, "gbit"], [1e6, "mbit"], [1e3, "kbit"]]) if (bps % f === 0) return bps / f + u;
  return String(bps);
}
function esc(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
}

// -- API with the tab's token ------------------------------------------------------------------
async function api(method, path, body) {
  for (;;) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (state.token) headers.Authorization = "Bearer " + state.token;
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (r.status === 401 && (await askToken())) continue;
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  }
}
function askToken() {
  const dialog = $("#token-dialog");
  $("#token-input").value = state.token || "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "ok" && $("#token-input").value) {
        state.token = $("#token-input").value;
        sessionStorage.setItem("imqd-token", state.token);
        restartStream();
        resolve(true);
      } else resolve(false);
    }, { once: true });
  });
}

// -- the class list (config) ---------------------------------------------------------------------
async function loadClasses() {
  const r = await api("GET", "/classes");
  if (r.status !== 200) return;
  state.classes = r.body;
  state.byName = new Map(r.body.map((c) => [c.name, c]));
  treeOrder(r.body);
  $("#class-names").innerHTML = r.body.map((c) => `<option value="${esc(c.name)}">`).join("");
  for (const name of state.live.keys()) if (!state.byName.has(name)) { state.live.delete(name); state.spark.delete(name); }
  refreshView();
}

// Live columns sort only the classes of the stream's top list (the busiest, by rate): a class seen only because
// it is on screen keeps its place, or scrolling would pull rows up under the reader and the list would churn.
// Depth-first order of the tree (parents before their children, config order among siblings) and each
// class's depth: sorting by the class column shows the tree, indented.
function treeOrder(classes) {
  const children = new Map();
  for (const c of classes) {
    const p = c.parent && state.byName.has(c.parent) ? c.parent : "";
    if (!children.has(p)) children.set(p, []);
    children.get(p).push(c);
  }
  let i = 0;
  const walk = (parent, depth) => {
    for (const c of children.get(parent) || []) { c._order = i++; c._depth = depth; walk(c.name, depth + 1); }
  };
  walk("", 0);
}

function sortValue(c, key) {
  const s = state.top.has(c.name) ? state.live.get(c.name) : undefined;
  switch (key) {
    case "name": return c._order;
    case "parent": return c.parent || "";
    case "rate": return c.rate;
    case "ceil": return c.ceil || c.rate;
    case "use": return s ? s.rate_bps / (c.ceil || c.rate || 1) : -1;
    case "backlog": return s ? s.backlog.packets : -1;
    default: return s ? s[key] : -1;   // not in the top list: after the classes that are, by name
  }
}

function refreshView() {
  const q = state.search.toLowerCase();
  let view = state.classes.filter((c) => c.direction === state.dir && (!q || c.name.toLowerCase().includes(q)
    || (c.parent || "").toLowerCase().includes(q)));
  const key = state.sort, sign = state.asc ? 1 : -1;
  const vals = new Map(view.map((c) => [c.name, sortValue(c, key)]));
  view.sort((a, b) => {
    const x = vals.get(a.name), y = vals.get(b.name);
    if (x === y) return a.name < b.name ? -1 : 1;
    return (x < y ? -1 : 1) * sign;
  });
  state.view = view;
  $("#count").textContent = `${view.length} of ${state.classes.filter((c) => c.direction === state.dir).length}`;
  for (const el of document.querySelectorAll(".thead span[data-sort]")) {
    el.classList.toggle("sorted", el.dataset.sort === key);
    el.classList.toggle("asc", el.dataset.sort === key && state.asc);
  }
  renderRows();
}

// -- virtual scrolling: only the rows on screen exist in the DOM ---------------------------------
function renderRows() {
  const box = $("#rows");
  $("#spacer").style.height = state.view.length * ROW_HEIGHT + "px";
  const first = Math.max(0, Math.floor(box.scrollTop / ROW_HEIGHT) - 2);
  const last = Math.min(state.view.length, first + Math.ceil(box.clientHeight / ROW_HEIGHT) + 4);
  const html = [];
  const watch = [];
  for (let i = first; i < last; i++) {
    const c = state.view[i];
    watch.push(c.name);
    html.push(rowHtml(c, i));
  }
  box.querySelectorAll(".row").forEach((el) => el.remove());
  box.insertAdjacentHTML("beforeend", html.join(""));
  if (window.imqdPerf.firstRowsAt === null && html.length) window.imqdPerf.firstRowsAt = performance.now();
  setWatch(watch);
}

function rowHtml(c, i) {
  const s = state.live.get(c.name);
  const ceil = c.ceil || c.rate;
  const now = s ? s.rate_bps : null;
  const use = now == null ? 0 : Math.min(1, now / (ceil || 1));
  const cls = now == null ? "" : now >= 0.98 * ceil ? "ceil" : now > c.rate ? "borrow" : "";
  const mark = ceil ? Math.min(100, (c.rate / ceil) * 100) : 0;
  return `<div class="row${state.selected === c.name ? " selected" : ""}" data-name="${esc(c.name)}" style="top:${i * ROW_HEIGHT}px">`
    + `<span title="${esc(c.name)}" style="padding-left:${state.sort === "name" ? c._depth * 14 : 0}px">${esc(c.name)}</span><span class="muted">${esc(c.parent || "–")}</span>`
    + `<span class="bar" title="now ${rate(now)} of ceil ${rate(ceil)}, rate ${rate(c.rate)}"><i class="${cls}" style="width:${(use * 100).toFixed(1)}%"></i><b style="left:${mark.toFixed(1)}%"></b></span>`
    + `<span class="num" data-k="now">${rate(now)}</span><span class="num">${rate(c.rate)}</span><span class="num">${rate(ceil)}</span>`
    + `<span class="num">${s ? count(s.borrowed) : "–"}</span><span class="num">${s ? count(s.backlog.packets) + "p" : "–"}</span>`
    + `<span class="num">${s ? count(s.drops) : "–"}</span><span>${sparkSvg(state.spark.get(c.name), ceil)}</span></div>`;
}

// The last minute of a class's rate, scaled to its ceil: a line along the top is a class at its ceiling.
function sparkSvg(points, ceil) {
  if (!points || points.length < 2) return "";
  const max = Math.max(ceil || 0, ...points, 1);
  const step = 130 / (points.length - 1);  // what the page has seen, up to the last minute, across the cell
  const pts = points.map((v, i) => `${(i * step).toFixed(1)},${(21 - (v / max) * 20).toFixed(1)}`).join(" ");
  return `<svg class="spark" viewBox="0 0 130 22" preserveAspectRatio="none"><polyline points="${pts}"/></svg>`;
}

// -- the stream ------------------------------------------------------------------------------------
let watchTimer = null;
function setWatch(names) {
  state.watch = names;
  const key = names.join("\n");
  if (key === state.streamKey) return;
  clearTimeout(watchTimer);
  watchTimer = setTimeout(() => { if (state.watch.join("\n") !== state.streamKey) restartStream(); },
                          state.stream ? 300 : 0);
}

function restartStream() {
  if (state.stream) state.stream.abort();
  const ctl = new AbortController();
  state.stream = ctl;
  state.streamKey = state.watch.join("\n");
  const params = new URLSearchParams({ top: String(STREAM_TOP) });
  for (const n of state.watch) params.append("watch", n);
  readStream("/stats/stream?" + params, ctl).catch(() => {});
}

// fetch, not EventSource: EventSource cannot send the Authorization header a token-protected API needs.
async function readStream(url, ctl) {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  let r;
  try { r = await fetch(url, { headers, signal: ctl.signal }); } catch (e) { return retryLater(ctl); }
  if (r.status === 401) { setConn("token needed", "down"); if (await askToken()) return; return retryLater(ctl); }
  if (!r.ok || !r.body) return retryLater(ctl);
  setConn("live", "live");
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    let chunk;
    try { chunk = await reader.read(); } catch (e) { break; }
    if (chunk.done) break;
    buf += decoder.decode(chunk.value, { stream: true });
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
  retryLater(ctl);
}
function retryLater(ctl) {
  if (state.stream !== ctl || ctl.signal.aborted) return;
  setConn("reconnecting…", "down");
  setTimeout(() => { if (state.stream === ctl) restartStream(); }, 2000);
}
function setConn(text, cls) { const el = $("#conn"); el.textContent = text; el.className = "pill " + cls; }

function onEvent(ev) {
  const t0 = performance.now();
  const seen = new Set();
  for (const d of ["ingress", "egress"]) for (const e of ev.top[d]) { state.live.set(e.name, e); seen.add(e.name); }
  state.top = new Set(seen);
  for (const [name, e] of Object.entries(ev.watch)) { state.live.set(name, e); seen.add(name); }
  for (const name of seen) {
    let h = state.spark.get(name);
    if (!h) { h = []; state.spark.set(name, h); }
    h.push(state.live.get(name).rate_bps);
    if (h.length > HISTORY_POINTS) h.shift();
  }
  if (ev.history) {
    state.chartData = [ev.history.time, ev.history.ingress, ev.history.egress];
  } else {
    const [t, i, e] = state.chartData;
    t.push(ev.time); i.push(ev.directions.ingress.rate_bps); e.push(ev.directions.egress.rate_bps);
    if (t.length > HISTORY_POINTS) { t.shift(); i.shift(); e.shift(); }
  }
  drawChart();
  for (const d of ["ingress", "egress"]) {
    const card = $("#card-" + d), tot = ev.directions[d];
    card.querySelector('[data-k="rate"]').textContent = rate(tot.rate_bps);
    card.querySelector('[data-k="drops"]').textContent = count(tot.drops);
    card.querySelector('[data-k="backlog"]').textContent = `${count(tot.backlog.packets)} packets`;
    card.querySelector('[data-k="classes"]').textContent = count(tot.classes);
  }
  $("#sampled").textContent = "sampled " + new Date(ev.time * 1000).toLocaleTimeString();
  setSwitch(ev.enabled);
  renderWorkers(ev.workers);
  renderChange(ev.last_change);
  if (state.changes !== null && ev.changes !== state.changes) loadClasses();
  state.changes = ev.changes;
  refreshView();
  if (state.selected) renderDetail();
  const ms = performance.now() - t0;
  const p = window.imqdPerf;
  p.updates++; p.lastUpdateMs = ms; p.maxUpdateMs = Math.max(p.maxUpdateMs, ms);
}

// -- link chart (uPlot) -------------------------------------------------------------------------------
function drawChart() {
  const el = $("#chart");
  if (!window.uPlot) { el.textContent = "chart library missing (scripts/fetch-dashboard-assets.sh)"; return; }
  if (!state.chart) {
    const opts = {
      width: Math.max(300, el.clientWidth), height: 200,
      series: [{}, { label: "ingress", stroke: "#1c7ed6", width: 2, points: { show: false }, value: (u, v) => rate(v) },
               { label: "egress", stroke: "#e8590c", width: 2, points: { show: false }, value: (u, v) => rate(v) }],
      axes: [{}, { values: (u, vals) => vals.map((v) => rate(v)), size: 80 }],
      scales: { y: { range: (u, min, max) => [0, Math.max(max * 1.1, 1000)] } },
    };
    state.chart = new uPlot(opts, state.chartData, el);
    new ResizeObserver(() => state.chart.setSize({ width: Math.max(300, el.clientWidth), height: 200 })).observe(el);
  } else state.chart.setData(state.chartData);
}

// -- workers, switch, last change -----------------------------------------------------------------
function renderWorkers(workers) {
  const total = workers.reduce((a, w) => a + (w.packets_per_second || 0), 0) || 1;
  $("#workers tbody").innerHTML = workers.map((w) => `<tr><td>${w.queue}</td><td>${w.cpu ?? "–"}</td>`
    + `<td class="num">${(w.cpu_percent ?? 0).toFixed(0)} %</td><td class="num">${count(Math.round(w.packets_per_second || 0))}</td>`
    + `<td><div class="share" style="width:${(100 * (w.packets_per_second || 0) / total).toFixed(0)}%"></div></td>`
    + `<td class="num">${count(w.held)}</td><td class="num">${count(w.drops)}</td><td class="num">${w.restarts}</td>`
    + `<td>${w.alive === false ? "dead" : w.ready === false ? "starting" : "up"}</td></tr>`).join("");
}
function setSwitch(enabled) {
  state.enabled = enabled;
  const b = $("#switch");
  b.textContent = "shaping: " + (enabled ? "on" : "off");
  b.className = enabled ? "on" : "off";
}
function renderChange(c) {
  if (!c) { $("#last-change").textContent = "no change since start"; return; }
  const applied = c.apply_seconds == null ? "" : `, applied in ${(c.apply_seconds * 1000).toFixed(1)} ms`;
  $("#last-change").textContent = `last change ${new Date(c.time * 1000).toLocaleTimeString()}: ${c.method} ${c.path}${applied}`;
}

// -- detail: a class and its top hosts --------------------------------------------------------------
function renderDetail() {
  const c = state.byName.get(state.selected), s = state.live.get(state.selected);
  if (!c) { $("#detail").hidden = true; return; }
  $("#detail").hidden = false;
  $("#detail-title").textContent = c.name;
  $("#detail-stats").innerHTML = s ? `now <b>${rate(s.rate_bps)}</b> · rate ${rate(c.rate)} · ceil ${rate(c.ceil || c.rate)}`
    + ` · ${count(s.bytes)} bytes · ${count(s.packets)} packets · drops ${count(s.drops)} · borrowed ${count(s.borrowed)}`
    + ` · backlog ${count(s.backlog.packets)} packets` : "no traffic seen yet";
  const hosts = [];
  for (const leaf of (s && s.qdisc) || []) for (const h of leaf.top_hosts || []) hosts.push(h);
  hosts.sort((a, b) => b.rate - a.rate);
  $("#hosts").innerHTML = hosts.length ? "<h2>top hosts</h2><table><tr><th>host</th><th class=num>rate</th><th class=num>backlog</th></tr>"
    + hosts.slice(0, 10).map((h) => `<tr><td>${esc(h.host)}</td><td class=num>${rate(h.rate)}</td><td class=num>${h.backlog_packets}p</td></tr>`).join("")
    + "</table>" : "";
}

// -- editing through the REST API -------------------------------------------------------------------
function openEditor(c) {
  state.editing = c ? c.name : null;
  const f = $("#class-form");
  f.reset();
  clearErrors();
  $("#editor").hidden = false;
  $("#editor-title").textContent = c ? "change " + c.name : "add class";
  $("#delete").hidden = !c;
  if (!c) { f.elements.direction.value = state.dir; return; }
  for (const k of FORM_FIELDS) {
    const el = f.elements[k];
    const v = k.startsWith("match.") ? (c.match || {})[k.slice(6)] : c[k];
    if (k === "default") el.checked = !!v;
    else if (Array.isArray(v)) el.value = v[0] === v[1] ? String(v[0]) : `${v[0]}-${v[1]}`;
    else if ((k === "rate" || k === "ceil") && typeof v === "number") el.value = tcRate(v);
    else el.value = v == null ? "" : String(v);
  }
}
function formBody() {
  const f = $("#class-form"), body = {}, match = {};
  for (const k of FORM_FIELDS) {
    const el = f.elements[k];
    const v = k === "default" ? el.checked : el.value.trim();
    if (k.startsWith("match.")) { if (v !== "") match[k.slice(6)] = v; continue; }
    if (v === "" && !state.editing) continue;
    body[k] = v === "" ? null : (k === "prio" && /^\d+$/.test(v) ? Number(v) : v);
  }
  if (Object.keys(match).length) body.match = match;
  else if (state.editing) body.match = null;
  return body;
}
function clearErrors() {
  document.querySelectorAll("#class-form .err").forEach((e) => (e.textContent = ""));
  document.querySelectorAll("#class-form .invalid").forEach((e) => e.classList.remove("invalid"));
  $("#form-error").textContent = "";
}
// The field a 422 names: ["classes", NAME, "ceil"], ["classes", NAME, "match", "dport"], ["body", "rate"].
function fieldOf(loc) {
  const i = loc.indexOf("match");
  if (i >= 0 && i + 1 < loc.length && FORM_FIELDS.includes("match." + loc[i + 1])) return "match." + loc[i + 1];
  for (let j = loc.length - 1; j >= 0; j--) if (FORM_FIELDS.includes(loc[j])) return loc[j];
  return null;
}
function showErrors(detail) {
  for (const e of detail || []) {
    const field = fieldOf(e.loc || []);
    const slot = field && document.querySelector(`#class-form .err[data-for="${field}"]`);
    if (slot) { slot.textContent = e.msg; $("#class-form").elements[field].classList.add("invalid"); }
    else $("#form-error").textContent = e.msg;
  }
}
async function save(ev) {
  ev.preventDefault();
  clearErrors();
  const body = formBody();
  const r = state.editing ? await api("PATCH", "/classes/" + encodeURIComponent(state.editing), body)
                          : await api("POST", "/classes", body);
  if (r.status >= 300) { showErrors(r.body && r.body.detail); return; }
  state.editing = r.body.name;  // further saves change it; it can be deleted
  $("#editor-title").textContent = "saved " + r.body.name;
  $("#delete").hidden = false;
  await loadClasses();
}
async function remove() {
  if (!state.editing || !confirm(`delete class ${state.editing}?`)) return;
  const r = await api("DELETE", "/classes/" + encodeURIComponent(state.editing));
  if (r.status >= 300) { showErrors(r.body && r.body.detail); return; }
  $("#editor").hidden = true;
  state.editing = null;
  await loadClasses();
}

// -- wiring ---------------------------------------------------------------------------------------
function init() {
  $("#rows").addEventListener("scroll", () => requestAnimationFrame(renderRows), { passive: true });
  $("#rows").addEventListener("click", (ev) => {
    const row = ev.target.closest(".row");
    if (!row) return;
    state.selected = row.dataset.name;
    renderDetail();
    openEditor(state.byName.get(row.dataset.name));
    renderRows();
  });
  $("#search").addEventListener("input", (ev) => { state.search = ev.target.value; $("#rows").scrollTop = 0; refreshView(); });
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => {
    document.querySelectorAll(".tabs button").forEach((x) => x.classList.toggle("active", x === b));
    state.dir = b.dataset.dir; $("#rows").scrollTop = 0; refreshView();
  });
  for (const h of document.querySelectorAll(".thead span[data-sort]")) h.addEventListener("click", () => {
    if (state.sort === h.dataset.sort) state.asc = !state.asc;
    else { state.sort = h.dataset.sort; state.asc = ["name", "parent"].includes(state.sort); }
    refreshView();
  });
  $("#switch").addEventListener("click", async () => {
    const r = await api("PUT", "/enabled", { enabled: !state.enabled });
    if (r.status === 200) setSwitch(r.body.enabled);
  });
  $("#token-button").addEventListener("click", () => askToken());
  $("#add-class").addEventListener("click", () => openEditor(null));
  $("#class-form").addEventListener("submit", save);
  $("#delete").addEventListener("click", remove);
  $("#cancel").addEventListener("click", () => { $("#editor").hidden = true; state.editing = null; });
  loadClasses().then(() => { if (!state.stream) restartStream(); });
}
init();
