// einc's report page (runtime/report_html.py): draws everything from the inlined JSON, no library,
// no network. Errors land in #errors (tests read it from the rendered DOM).
"use strict";
const errors = [];
function fault(msg) {
  errors.push(String(msg));
  const el = document.getElementById("errors");
  if (el) { el.textContent = errors.join("\n"); el.hidden = false; }
}
window.onerror = (msg, src, line, col) => fault(`${msg} (line ${line}:${col})`);
window.addEventListener("unhandledrejection", (e) => fault(`unhandled rejection: ${e.reason}`));

const D = JSON.parse(document.getElementById("data").textContent);
const M = D.meta, E = D.ev, N = E.i.length, P = D.progress;
const KEY = "einc-report:" + location.pathname;
let saved = {};
try { saved = JSON.parse(sessionStorage.getItem(KEY) || "{}"); } catch (e) { saved = {}; }
const state = { sort: saved.sort ?? 0, dir: saved.dir ?? 1, page: saved.page ?? 0, filter: saved.filter ?? "all",
                cost: saved.cost ?? "params", sel: saved.sel ?? null, paused: !!saved.paused };
const rowOf = new Map(E.i.map((index, r) => [index, r]));  // evaluation index -> row
const front = { params: new Set(D.pareto.params), flops: new Set(D.pareto.flops) };

// ------------------------------------------------------------------ formatting

const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
function fv(v) {  // a value of the search's metric
  if (v === null || v === undefined) return "–";
  return M.percent ? (100 * v).toFixed(2) + "%" : Number(v.toPrecision(4)).toString();
}
function fn(n) {  // a count: 1.23M, 45.6k
  if (n === null || n === undefined) return "–";
  const a = Math.abs(n);
  for (const [d, u] of [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]]) if (a >= d) return (n / d).toPrecision(3) + u;
  return String(n);
}
function ft(s) {  // seconds
  if (s === null || s === undefined) return "–";
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.round((s % 86400) / 3600) + " h";
}
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(0) + "%");
const origin = (r) => (E.o[r] < 0 ? "" : E.origins[E.o[r]]);
const reason = (r) => (E.r[r] < 0 ? "" : E.reasons[E.r[r]]);
const status = (r) => (E.d[r] !== null ? "repeat" : E.ok[r] ? "ok" : "failed");
const better = (a, b) => (M.minimize ? a < b : a > b);
function el(tag, attrs, html) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (html !== undefined) e.innerHTML = html;
  return e;
}

// ------------------------------------------------------------------ charts (hand-written SVG)

function ticks(lo, hi, log) {
  if (log) {
    const out = [];
    for (let p = Math.floor(Math.log10(lo)); p <= Math.ceil(Math.log10(hi)); p++) {
      for (const m of hi / lo < 100 ? [1, 2, 5] : [1]) { const t = m * 10 ** p; if (t >= lo && t <= hi) out.push(t); }
    }
    return out;
  }
  const span = hi - lo || Math.abs(hi) || 1, raw = span / 6, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)));
  return out;
}
// cfg: {x: {lo, hi, log, fmt, label}, y: {...}, points: [[x, y, row, cls]], lines: [[cls, [[x, y]...]]]}
function chart(host, cfg) {
  const W = 640, H = 330, L = 64, R = 14, T = 12, B = 42;
  const scale = (a, lo, hi, p0, p1) => {
    const f = (v) => (a.log ? Math.log10(Math.max(v, lo)) : v);
    const l = f(lo), h = f(hi) === l ? l + 1 : f(hi);
    return (v) => p0 + ((f(v) - l) / (h - l)) * (p1 - p0);
  };
  const X = scale(cfg.x, cfg.x.lo, cfg.x.hi, L, W - R), Y = scale(cfg.y, cfg.y.lo, cfg.y.hi, H - B, T);
  const s = [`<svg class="chart" viewBox="0 0 ${W} ${H}" xmlns="http://www.w3.org/2000/svg">`];
  for (const t of (cfg.x.ticks || ticks)(cfg.x.lo, cfg.x.hi, cfg.x.log)) {
    const x = X(t).toFixed(1);
    s.push(`<line class="grid" x1="${x}" x2="${x}" y1="${T}" y2="${H - B}"/>`,
           `<text x="${x}" y="${H - B + 15}" text-anchor="middle">${esc(cfg.x.fmt(t))}</text>`);
  }
  for (const t of ticks(cfg.y.lo, cfg.y.hi, false)) {
    const y = Y(t).toFixed(1);
    s.push(`<line class="grid" x1="${L}" x2="${W - R}" y1="${y}" y2="${y}"/>`,
           `<text x="${L - 6}" y="${y}" dy="4" text-anchor="end">${esc(cfg.y.fmt(t))}</text>`);
  }
  s.push(`<line class="axis" x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}"/>`,
         `<line class="axis" x1="${L}" x2="${L}" y1="${T}" y2="${H - B}"/>`,
         `<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">${esc(cfg.x.label)}</text>`,
         `<text transform="translate(14 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${esc(cfg.y.label)}</text>`);
  for (const [x, y, r, cls] of cfg.points) {
    s.push(`<circle cx="${X(x).toFixed(1)}" cy="${Y(y).toFixed(1)}" r="${cls === "front" ? 4 : 2.6}"` +
           `${cls ? ` class="${cls}"` : ""} data-r="${r}"/>`);
  }
  for (const [cls, pts] of cfg.lines) {
    if (!pts.length) continue;
    let d = `M${X(pts[0][0]).toFixed(1)} ${Y(pts[0][1]).toFixed(1)}`;
    for (let k = 1; k < pts.length; k++) d += `H${X(pts[k][0]).toFixed(1)}V${Y(pts[k][1]).toFixed(1)}`;
    if (cfg.extend) d += `H${X(cfg.x.hi).toFixed(1)}`;
    s.push(`<path class="${cls}" d="${d}"/>`);
  }
  s.push("</svg>");
  host.innerHTML = s.join("");
  host.dataset.points = cfg.points.length;
  const svg = host.firstChild;
  svg.addEventListener("mouseover", (e) => { const r = e.target.dataset.r; if (r !== undefined) tip(e, +r); });
  svg.addEventListener("mousemove", (e) => { if (e.target.dataset.r !== undefined) place(e); });
  svg.addEventListener("mouseout", () => { document.getElementById("tip").hidden = true; });
  svg.addEventListener("click", (e) => { const r = e.target.dataset.r; if (r !== undefined) select(+r); });
  mark();
}
function range(vals, pad) {
  let lo = Infinity, hi = -Infinity;
  for (const v of vals) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (lo === Infinity) return [0, 1];
  const p = (hi - lo || Math.abs(hi) || 1) * pad;
  return [lo - p, hi + p];
}
const yAxis = (lo, hi) => ({ lo, hi, log: false, fmt: (t) => fv(t), label: `validation ${M.label}` });
function tip(e, r) {
  const t = document.getElementById("tip");
  t.innerHTML = `#${E.i[r]} · ${origin(r)}${E.p[r] !== null ? " of #" + E.p[r] : ""} · ${status(r)} · ` +
    `${M.label} ${fv(E.v[r])} · ${fn(E.pa[r])} params · ${fn(E.fl[r])} FLOPs` +
    (ARCHS ? `<br><code>${esc(short(ARCHS[E.a[r]], 300))}</code>` : "") + "<br><i>click for the architecture</i>";
  t.hidden = false;
  place(e);
}
function place(e) {
  const t = document.getElementById("tip");
  t.style.left = Math.min(e.clientX + 14, innerWidth - t.offsetWidth - 8) + "px";
  t.style.top = (e.clientY + 14 + t.offsetHeight > innerHeight ? e.clientY - t.offsetHeight - 10 : e.clientY + 14) + "px";
}
const short = (s, n) => (s.length > n ? s.slice(0, n) + " …" : s);

// best so far, by (rung, value) as the search ranks: a longer training beats any shorter one
function bestCurve(order, xOf) {
  const pts = [], line = [];
  let best = null, rung = -1;
  for (const r of order) {
    const v = E.v[r], ru = E.ru[r] ?? 0;
    if (v !== null && (ru > rung || (ru === rung && better(v, best)))) { best = v; rung = ru; line.push([xOf(r), v]); }
    pts.push(r);
  }
  return [pts, line];
}
function timeAxis(hi) {  // ticks at round seconds, minutes, hours or days
  const [u, name] = hi < 120 ? [1, "s"] : hi < 7200 ? [60, "min"] : hi < 172800 ? [3600, "h"] : [86400, "d"];
  return { lo: 0, hi, log: false, fmt: (t) => `${Number((t / u).toPrecision(6))} ${name}`,
           label: "wall time since the search started", ticks: (lo, h) => ticks(lo / u, h / u, false).map((t) => t * u) };
}
function progressCharts() {
  const trained = [];
  for (let r = 0; r < N; r++) if (E.d[r] === null) trained.push(r);
  const nth = new Map(trained.map((r, k) => [r, k + 1]));
  const vals = trained.map((r) => E.v[r]).filter((v) => v !== null);
  const [ylo, yhi] = range(vals, 0.04);
  const fails = (r, x) => [x, M.minimize ? yhi : ylo, r, "fail"];
  const [, line1] = bestCurve(trained, (r) => nth.get(r));
  chart(document.getElementById("by-training"), {
    x: { lo: 0, hi: Math.max(1, trained.length), log: false, fmt: (t) => String(t), label: "trainings",
         ticks: (lo, hi) => ticks(lo, hi, false).filter(Number.isInteger) },
    y: yAxis(ylo, yhi), extend: true,
    points: trained.map((r) => (E.v[r] === null ? fails(r, nth.get(r)) : [nth.get(r), E.v[r], r, ""])),
    lines: [["best", line1]] });
  const timed = trained.filter((r) => E.f[r] !== null).sort((a, b) => E.f[a] - E.f[b]);
  const [, line2] = bestCurve(timed, (r) => E.f[r]);
  const tmax = Math.max(1, ...timed.map((r) => E.f[r]));
  chart(document.getElementById("by-time"), {
    x: timeAxis(tmax),
    y: yAxis(ylo, yhi), extend: true,
    points: timed.map((r) => (E.v[r] === null ? fails(r, E.f[r]) : [E.f[r], E.v[r], r, ""])),
    lines: [["best", line2]] });
}
function paretoChart() {
  const c = state.cost, cost = c === "params" ? E.pa : E.fl, on = front[c];
  const rows = [];
  for (let r = 0; r < N; r++) if (E.d[r] === null && E.v[r] !== null && cost[r] !== null) rows.push(r);
  const costs = rows.map((r) => Math.max(1, cost[r]));
  const lo = Math.max(1, Math.min(...costs, Infinity) / 1.3), hi = Math.max(lo * 10, Math.max(...costs, 1) * 1.3);
  const [ylo, yhi] = range(rows.map((r) => E.v[r]), 0.04);
  const fr = D.pareto[c].map((i) => rowOf.get(i)).filter((r) => r !== undefined);
  rows.sort((a, b) => on.has(E.i[a]) - on.has(E.i[b]));  // the front on top
  chart(document.getElementById("pareto"), {
    x: { lo, hi, log: true, fmt: fn, label: c === "params" ? "parameters (backbone)" : "FLOPs per input" },
    y: yAxis(ylo, yhi), extend: true,
    points: rows.map((r) => [Math.max(1, cost[r]), E.v[r], r, on.has(E.i[r]) ? "front" : ""]),
    lines: [["front", fr.map((r) => [Math.max(1, cost[r]), E.v[r]])]] });
  for (const b of document.querySelectorAll("#cost button")) b.classList.toggle("on", b.dataset.cost === c);
  document.getElementById("front-n").textContent = `${fr.length} on the front`;
}
function mark() {  // ring the selected evaluation in every chart
  for (const old of document.querySelectorAll("circle.sel")) old.remove();
  if (state.sel === null) return;
  for (const c of document.querySelectorAll(`circle[data-r="${state.sel}"]`)) {
    const ring = c.cloneNode();
    ring.setAttribute("class", "sel");
    ring.setAttribute("r", "6");
    c.parentNode.appendChild(ring);
  }
}

// ------------------------------------------------------------------ the table

const COLS = [
  ["#", (r) => E.i[r]], ["origin", origin, "l"], ["parent", (r) => E.p[r]],
  [`val ${M.label}`, (r) => E.v[r], "", fv], ["params", (r) => E.pa[r], "", fn], ["FLOPs", (r) => E.fl[r], "", fn],
  ["time", (r) => (E.d[r] === null ? E.s[r] : null), "", ft], ["status", status, "l"],
  ["reason", (r) => (E.d[r] !== null ? `same as #${E.d[r]}` : reason(r)), "l reason"],
];
if (M.fidelity.length) COLS.push(["rung", (r) => E.ru[r]], ["epochs", (r) => E.ep[r]]);
const PAGE = 100;
let order = [];
function filtered() {
  const f = state.filter, out = [];
  for (let r = 0; r < N; r++) {
    const s = status(r);
    if (f === "all" || f === s || (f === "front" && front[state.cost].has(E.i[r]))) out.push(r);
  }
  const [, get] = COLS[state.sort], dir = state.dir;
  out.sort((a, b) => {
    const x = get(a), y = get(b);
    if (x === y) return E.i[a] - E.i[b];
    if (x === null || x === "") return 1;
    if (y === null || y === "") return -1;
    return (x < y ? -1 : 1) * dir;
  });
  return out;
}
function table() {
  order = filtered();
  const pages = Math.max(1, Math.ceil(order.length / PAGE));
  state.page = Math.min(Math.max(0, state.page), pages - 1);
  const head = COLS.map(([name, , cls], k) =>
    `<th data-k="${k}" class="${cls ? "l " : ""}${k === state.sort ? (state.dir > 0 ? "asc" : "desc") : ""}">${esc(name)}</th>`);
  const body = order.slice(state.page * PAGE, (state.page + 1) * PAGE).map((r) => {
    const s = status(r);
    const tds = COLS.map(([, get, cls, f]) => {
      const v = get(r), text = f ? f(v) : v ?? "";
      return `<td${cls ? ` class="${cls}"` : ""}${cls && cls.includes("reason") && v ? ` title="${esc(v)}"` : ""}>${esc(text)}</td>`;
    });
    return `<tr data-r="${r}" class="${s === "ok" ? "" : s}${r === state.sel ? " sel" : ""}">${tds.join("")}</tr>`;
  });
  document.getElementById("trials").innerHTML = `<thead><tr>${head.join("")}</tr></thead><tbody>${body.join("")}</tbody>`;
  document.getElementById("page").textContent =
    `${order.length ? state.page * PAGE + 1 : 0}–${Math.min(order.length, (state.page + 1) * PAGE)} of ${order.length}` +
    ` (page ${state.page + 1} of ${pages})`;
}

// ------------------------------------------------------------------ the architectures' texts

let ARCHS = null;  // the distinct architectures, inflated from D.archs.z
async function inflate() {
  if (typeof DecompressionStream === "undefined") throw new Error("this browser cannot inflate (no DecompressionStream)");
  const parts = await Promise.all(D.archs.z.map(async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return (await new Response(stream).text()).split("\n");
  }));
  return parts.flat();
}

function select(r) {
  state.sel = r;
  const box = document.getElementById("detail");
  if (r === null || r === undefined) { box.hidden = true; mark(); table(); return; }
  const facts = [`${origin(r)}${E.p[r] !== null ? " of #" + E.p[r] : ""}`, status(r),
                 `validation ${M.label} ${fv(E.v[r])}`, `${fn(E.pa[r])} params`, `${fn(E.fl[r])} FLOPs`,
                 `trained ${ft(E.s[r])}`];
  if (M.fidelity.length) facts.push(`rung ${E.ru[r]} (${E.ep[r]} epochs)`);
  if (reason(r)) facts.push(`reason: ${reason(r)}`);
  if (E.d[r] !== null) facts.push(`a repeat of #${E.d[r]}, whose result it reuses`);
  box.innerHTML = `<button class="close" title="close">×</button><b>evaluation #${E.i[r]}</b> · ` +
    esc(facts.join(" · ")) + `<pre class="wrap" id="detail-arch">${ARCHS ? esc(ARCHS[E.a[r]]) : "(inflating…)"}</pre>`;
  box.hidden = false;
  box.querySelector(".close").onclick = () => select(null);
  mark();
  table();
}

// ------------------------------------------------------------------ the sections

function header() {
  const where = [M.strategy === "re" ? "regularised evolution" : M.strategy === "rs" ? "random search" : "sampling",
                 M.data ? `on ${M.data}` : "", M.objective ? `objective ${M.objective}` : "", `grammar ${M.grammar}`,
                 M.input ? `input ${M.input.join("×")}` : ""].filter(Boolean).join(" · ");
  let badge;
  if (M.live) badge = `<span class="status live">running</span> <span class="muted">reloads every ${M.reload} s</span> ` +
    `<label class="muted"><input type="checkbox" id="pause"${state.paused ? " checked" : ""}> pause</label>`;
  else if (M.finished || (M.budget !== null && P.trained >= M.budget)) badge = `<span class="status">finished</span>`;
  else badge = `<span class="status">not running</span> <span class="muted">(stopped: continue with einc search --resume)</span>`;
  const when = new Date(1000 * M.generated).toLocaleString();
  return `<h1>${esc(M.title)}${badge}</h1><p class="muted">${esc(where)} · metric: validation ${esc(M.label)} ` +
    `(${M.minimize ? "lower" : "higher"} is better) · written ${esc(when)}</p>`;
}
function progress() {
  const b = M.budget, share = b ? Math.min(1, P.trained / b) : 0;
  const wall = M.live ? M.generated - M.t0 : Math.max(0, ...E.f.filter((f) => f !== null));
  const left = M.live && b && P.evaluations_per_minute ? ((b - P.trained) / P.evaluations_per_minute) * 60 : null;
  return `<h2>Progress</h2>` + (b ? `<div class="bar"><div style="width:${(100 * share).toFixed(1)}%"></div></div>` : "") +
    `<div class="figs"><span><b>${P.trained}</b>${b ? ` of ${b}` : ""} trainings${b ? ` (${(100 * share).toFixed(0)}%)` : ""}</span>` +
    `<span><b>${P.failed}</b> failed</span><span><b>${P.repeats}</b> repeats reused</span>` +
    `<span><b>${P.evaluations_per_minute ?? "–"}</b> evaluations/min</span>` +
    `<span>workers busy <b>${pct(P.busy)}</b> of ${M.workers}</span>` +
    (M.live ? `<span><b>${P.in_flight}</b> training now</span>` : "") +
    `<span>wall time <b>${ft(wall)}</b></span>` + (left !== null ? `<span>about <b>${ft(left)}</b> left</span>` : "") +
    `</div><p class="muted">Rate and busy share are the latest session's (a resumed search counts from its resume).</p>`;
}
function best() {
  const b = D.best;
  if (!b) return `<h2>Best architecture</h2><p>No evaluation has succeeded yet.</p>`;
  return `<h2>Best architecture: evaluation #${b.index}</h2><p>validation ${esc(M.label)} <b>${fv(b.value)}</b> · ` +
    `${b.params === null ? "–" : b.params.toLocaleString("en")} parameters (backbone) · ${fn(b.flops)} FLOPs` +
    `${b.epochs ? ` · ${b.epochs} epochs` : ""} · <a href="#" id="best-select">show in the charts</a></p>` +
    (b.svg ? `<div id="drawing">${b.svg}</div>` : `<p class="muted">(not drawn)</p>`) +
    `<p>Laid out (<code>einc fmt</code>):</p><pre id="best-fmt">${esc(b.formatted)}</pre>` +
    `<p>Bracket notation (journal, <code>best.arch</code>):</p><pre class="wrap" id="best-text">${esc(b.text)}</pre>`;
}
function rungs() {
  if (!D.rungs.length) return "";
  const rows = D.rungs.map((g) => `<tr><td>${g.rung}</td><td>${g.epochs}</td><td>${g.trained}</td><td>${g.failed}</td>` +
    `<td>${g.promoted}</td><td>${fv(g.median)}</td><td>${fv(g.best)}</td></tr>`).join("");
  return `<h2>Multi-fidelity rungs</h2><p class="muted">Successive halving: the best 1/${M.eta} of a rung is trained again ` +
    `for the next rung's epochs.</p><table id="rungs"><thead><tr><th>rung</th><th>epochs</th><th>trained</th><th>failed</th>` +
    `<th>promoted</th><th>median ${esc(M.label)}</th><th>best</th></tr></thead><tbody>${rows}</tbody></table>`;
}
function alternatives() {
  const A = D.alternatives;
  if (!A) return "";
  const bar = (n, total, cls) => `<td class="bar ${cls}"><span style="width:${total ? (80 * n) / total : 0}px"></span> ` +
    `${total ? ((100 * n) / total).toFixed(0) : 0}%</td>`;
  const tables = A.rules.map((g) => {
    const used = g.alts.filter((a) => a[2] || a[3]), idle = g.alts.length - used.length;
    const rows = used.map(([name, p, t, r]) => `<tr><td class="l"><code>${esc(name)}</code></td><td>${p.toFixed(3)}</td>` +
      bar(t, g.top, "t") + bar(r, g.run, "r") + "</tr>").join("");
    return `<table><thead><tr><th class="l">${esc(g.rule)}</th><th>grammar p</th><th>top ${A.top}</th><th>run</th></tr>` +
      `</thead><tbody>${rows}${idle ? `<tr><td class="l muted" colspan="4">${idle} unused alternative${idle > 1 ? "s" : ""}</td></tr>` : ""}` +
      `</tbody></table>`;
  }).join("");
  const of = A.run < A.distinct ? `${A.run} of the run's ${A.distinct} architectures (evenly spaced)` :
    `all ${A.distinct} architectures of the run`;
  return `<h2>Grammar alternatives: the best against the whole run</h2><p class="muted">The share of each rule's ` +
    `expansions taken by each alternative, in the ${A.top} best architectures (what <code>einc fit --top ${A.top}</code> ` +
    `learns from) and in ${of}.${A.unparsed ? ` ${A.unparsed} architectures are not derivations of this grammar and ` +
    "count nothing." : ""}</p><div class="alts" id="alts">${tables}</div>`;
}

function render() {
  document.body.innerHTML = header() + `<div id="progress">${progress()}</div>` +
    `<h2>Best so far</h2><div class="row"><div class="panel"><div id="by-training"></div></div>` +
    `<div class="panel"><div id="by-time"></div></div></div>` +
    `<p class="legend"><i style="background:var(--point)"></i>evaluation<i style="background:var(--fail)"></i>failed` +
    `<i style="background:var(--accent)"></i>best so far</p>` +
    `<h2>Pareto front</h2><div class="pager" id="cost">${esc(M.label)} against <button data-cost="params">parameters</button>` +
    `<button data-cost="flops">FLOPs</button><span class="muted" id="front-n"></span><span class="muted">hover a point ` +
    `for its architecture, click to keep it</span></div><div class="row"><div class="panel" style="max-width:900px">` +
    `<div id="pareto"></div></div></div>` +
    `<div id="best">${best()}</div>${rungs()}${alternatives()}` +
    `<h2>Every evaluation</h2><div class="pager"><button id="first">«</button><button id="prev">‹</button>` +
    `<span id="page"></span><button id="next">›</button><button id="last">»</button> <label>show <select id="filter">` +
    ["all", "ok", "failed", "repeat", "front"].map((f) => `<option${f === state.filter ? " selected" : ""}>${f}</option>`).join("") +
    `</select></label><span class="muted">click a column to sort, a row for its architecture</span></div>` +
    `<table id="trials"></table><div id="detail" hidden></div><div id="tip" hidden></div><pre id="errors" hidden></pre>`;
  progressCharts();
  paretoChart();
  table();
  const on = (id, ev, f) => { const e = document.getElementById(id); if (e) e.addEventListener(ev, f); };
  on("cost", "click", (e) => { if (e.target.dataset.cost) { state.cost = e.target.dataset.cost; paretoChart(); table(); } });
  on("trials", "click", (e) => {
    const th = e.target.closest("th"), tr = e.target.closest("tr[data-r]");
    if (th) { const k = +th.dataset.k; state.dir = k === state.sort ? -state.dir : k === 3 && !M.minimize ? -1 : 1; state.sort = k; table(); }
    else if (tr) select(+tr.dataset.r);
  });
  const go = (f) => () => { state.page = f(state.page); table(); };
  on("first", "click", go(() => 0));
  on("prev", "click", go((p) => p - 1));
  on("next", "click", go((p) => p + 1));
  on("last", "click", go(() => 1e9));
  on("filter", "change", (e) => { state.filter = e.target.value; state.page = 0; table(); });
  on("pause", "change", (e) => { state.paused = e.target.checked; save(); if (!state.paused) schedule(); });
  on("best-select", "click", (e) => { e.preventDefault(); select(rowOf.get(D.best.index)); });
}

function save() {
  try { sessionStorage.setItem(KEY, JSON.stringify({ ...state, y: scrollY })); } catch (e) { /* storage off: fine */ }
}
let timer = null;
function schedule() {
  clearTimeout(timer);
  if (M.live && !state.paused) timer = setTimeout(() => { if (!state.paused) { save(); location.reload(); } }, 1000 * M.reload);
}

render();
const linked = /^#eval-(\d+)$/.exec(location.hash);  // report.html#eval-12 opens evaluation 12
if (linked && rowOf.has(+linked[1])) state.sel = rowOf.get(+linked[1]);
if (state.sel !== null && state.sel < N) select(state.sel); else state.sel = null;
if (saved.y) scrollTo(0, saved.y);
document.body.dataset.rendered = Math.round(performance.now());  // ms from navigation to a drawn page
addEventListener("pagehide", save);
schedule();
const inflating = performance.now();
inflate().then((list) => {
  ARCHS = list;
  document.body.dataset.archs = String(list.length);
  document.body.dataset.inflated = Math.round(performance.now() - inflating);  // ms spent inflating
  if (state.sel !== null) document.getElementById("detail-arch").textContent = ARCHS[E.a[state.sel]];
}).catch((e) => fault(`architectures not shown: ${e.message}`));
