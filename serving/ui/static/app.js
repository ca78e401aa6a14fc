// featurestream dashboard: polls GET /v1/dashboard and renders tables and charts.
// Plain browser JavaScript, no build step; charts by uPlot (vendored, MIT).
"use strict";

const REFRESH_MS = 5000;
const COLORS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#2c7a7b"];
const charts = {};

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function num(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return esc(value);
  if (Math.abs(value) >= 1000) return value.toLocaleString("en-US", {maximumFractionDigits: 0});
  return value.toFixed(digits);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.abs(seconds);
  if (s < 60) return seconds.toFixed(1) + " s";
  if (s < 3600) return (seconds / 60).toFixed(1) + " min";
  if (s < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

function freshClass(seconds, kind) {
  if (seconds === null || seconds === undefined) return "";
  if (kind === "batch") return "";
  return seconds < 30 ? "fresh-ok" : seconds < 300 ? "fresh-warn" : "fresh-bad";
}

function rows(tableId, items, render, emptyText) {
  const body = document.querySelector(`#${tableId} tbody`);
  const cols = document.querySelectorAll(`#${tableId} thead th`).length;
  body.innerHTML = items.length ? items.map(render).join("")
    : `<tr><td class="empty" colspan="${cols}">${esc(emptyText)}</td></tr>`;
}

function tags(obj) {
  if (!obj || typeof obj !== "object") return esc(obj ?? "");
  const entries = Array.isArray(obj) ? obj.map((v) => [null, v]) : Object.entries(obj);
  if (!entries.length) return "–";
  return `<span class="tags">${entries.map(([k, v]) => `<span>${k === null ? "" : esc(k) + ": "}${
    typeof v === "number" ? num(v, Number.isInteger(v) ? 0 : 3) : esc(typeof v === "object" ? JSON.stringify(v) : v)}</span>`).join("")}</span>`;
}

function version(v, fingerprint) {
  const fp = fingerprint ? ` <span class="muted mono">${esc(fingerprint)}</span>` : "";
  return (v === null || v === undefined ? "" : `v${esc(v)}`) + fp;
}

function statusClass(status) {
  const s = String(status ?? "unknown").toLowerCase();
  return ["ok", "stable", "none", "no_drift"].includes(s) ? "ok"
    : ["warning", "warn"].includes(s) ? "warn" : ["drift", "drifting", "alert", "bad", "stale"].includes(s) ? "bad" : "";
}

function badge(status) {
  const cls = statusClass(status);
  return `<span class="badge ${cls}">${esc(status ?? "unknown")}</span>`;
}

// A worker's lag: the sum over the partitions it holds whose highwater it has seen.
function lagOf(worker) {
  return worker.partitions.reduce((a, p) => a + (p.lag || 0), 0);
}

function renderCards(doc) {
  const streams = doc.sources.filter((s) => s.kind === "stream");
  const rate = streams.reduce((a, s) => a + (s.events_per_s || 0), 0);
  const fresh = streams.map((s) => s.freshness_s).filter((v) => v !== null && v !== undefined);
  const sum = (key) => streams.reduce((a, s) => a + (s[key] || 0), 0);
  const live = doc.workers.filter((w) => !w.stale);
  const stale = doc.workers.length - live.length;
  const cards = [
    ["feature views", doc.views.length],
    ["events/s (last min)", num(rate)],
    ["freshness (worst stream)", fresh.length ? age(Math.max(...fresh)) : "–"],
    ["events applied", num(sum("applied"), 0)],
    ["late", num(sum("late"), 0)],
    ["dead letters", num(sum("invalid"), 0)],
    ["model versions", doc.models.length],
    ["stream workers", `${live.length}` + (stale ? ` <span class="fresh-bad">+${stale} stale</span>` : "")],
    ["consumer lag (events)", num(live.reduce((a, w) => a + lagOf(w), 0), 0)],
  ];
  document.getElementById("cards").innerHTML = cards.map(([label, value]) =>
    `<div class="card"><div class="label">${esc(label)}</div><div class="value">${value}</div></div>`).join("");
}

function render(doc) {
  const missing = document.getElementById("missing");
  missing.hidden = !doc.missing.length;
  missing.innerHTML = doc.missing.map((m) => `<li>${esc(m)}</li>`).join("");
  renderCards(doc);
  rows("views", doc.views, (v) => `<tr data-view="${esc(v.name)}"><td><b>${esc(v.name)}</b></td><td>${esc(v.entity)}</td>
    <td>${esc(v.source)}</td><td>${esc(v.kind)}</td><td>${tags(v.features)}</td><td>${version(v.version, v.fingerprint)}</td>
    <td class="num freshness ${freshClass(v.freshness_s, doc.sources.find((s) => s.name === v.source)?.kind)}">${age(v.freshness_s)}</td>
    <td class="num">${num(v.events_per_s)}</td></tr>`, "no feature views applied");
  rows("services", doc.services, (s) => `<tr><td><b>${esc(s.name)}</b></td><td>${tags(s.features)}</td>
    <td>${version(s.version, s.fingerprint)}</td></tr>`, "no feature services");
  rows("sources", doc.sources, (s) => `<tr><td><b>${esc(s.name)}</b>${s.topic ? ` <span class="muted mono">${esc(s.topic)}</span>` : ""}</td>
    <td>${esc(s.kind)}</td><td class="num">${num(s.applied, 0)}</td><td class="num">${num(s.late, 0)}</td>
    <td class="num">${num(s.invalid, 0)}</td><td class="num">${num(s.events_per_s)}</td>
    <td class="num ${freshClass(s.freshness_s, s.kind)}">${age(s.freshness_s)}</td></tr>`, "no sources");
  rows("workers", doc.workers, (w) => `<tr data-worker="${esc(w.worker)}"><td class="mono">${esc(w.worker)}</td>
    <td>${esc(w.group)}</td><td>${tags(w.partitions.map((p) => `${p.source}:${p.partition} (${p.lag ?? "?"})`))}</td>
    <td class="num lag">${num(lagOf(w), 0)}</td><td class="num">${num(w.events_per_s)}</td>
    <td class="num">${num(w.events, 0)}</td><td class="num">${num(w.dead_letters, 0)}</td>
    <td>${age(w.age_s)} ago ${w.stale ? badge("stale") : badge("ok")}</td></tr>`,
  "no stream worker reporting (start `featurestream worker`)");
  rows("drift", doc.drift, (d) => `<tr><td>${esc(d.feature)}</td><td>${badge(d.status)}</td>
    <td class="num">${num(d.score, 3)}</td><td>${tags(d.detail)}</td></tr>`, "no drift data yet");
  // this API process's answers per version over the last minute, and how many its fallback gave
  const answers = new Map((doc.serving ? doc.serving.models : []).map((p) => [`${p.model}\u0000${p.version}`, p]));
  const answered = (m) => {
    const p = answers.get(`${m.name}\u0000${m.version}`);
    if (!p) return "–";
    const fallback = p.fallback_share > 0 ? ` <span class="fresh-bad">(${num(100 * p.fallback_share, 1)} % fallback)</span>` : "";
    return num(p.predictions_per_s) + fallback;
  };
  rows("models", doc.models, (m) => `<tr data-model="${esc(m.name)}" data-version="${esc(m.version)}"><td><b>${esc(m.name)}</b></td>
    <td class="model-version">v${esc(m.version)}</td><td>${esc(m.stage ?? "")}</td>
    <td class="num predictions">${answered(m)}</td><td>${tags(m.metrics)}</td>
    <td>${tags(m.lineage)}</td></tr>`, "no models registered");
  renderServing(doc.serving);
  renderTimeCharts(doc);
  renderDriftBars(doc.drift);
  document.getElementById("status").textContent =
    `updated ${new Date(doc.generated_at).toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s`;
}

// One x axis (seconds) shared by all stream sources; gaps where a source has no bucket.
function aligned(sources, pick) {
  const xs = [...new Set(sources.flatMap((s) => s.series.map((p) => p[0])))].sort((a, b) => a - b);
  const data = [xs];
  for (const s of sources) {
    for (const idx of pick) {
      const byX = new Map(s.series.map((p) => [p[0], p[idx]]));
      data.push(xs.map((x) => (byX.has(x) ? byX.get(x) : null)));
    }
  }
  return data;
}

function timeChart(id, title, sources, pick, labels, emptyText) {
  const el = document.getElementById(id);
  const series = [{}];
  sources.forEach((s, i) => pick.forEach((_, j) => series.push({
    label: `${s.name} ${labels[j]}`, stroke: COLORS[i % COLORS.length], width: j === 0 ? 2 : 1,
    dash: j === 0 ? undefined : [4, 4], spanGaps: false,
  })));
  const data = aligned(sources, pick);
  const key = series.map((s) => s.label).join("|");
  const width = Math.max(el.clientWidth, 300);
  if (!data[0].length) {
    if (charts[id]) { charts[id].plot.destroy(); delete charts[id]; }
    el.innerHTML = `<p class="muted">${esc(emptyText)}</p>`;
    return;
  }
  if (charts[id] && charts[id].key === key) {
    charts[id].plot.setData(data);
    return;
  }
  if (charts[id]) charts[id].plot.destroy();
  el.innerHTML = "";
  const clock = (u, splits) => splits.map((v) => new Date(v * 1000).toLocaleTimeString([], {hour12: false}));
  const plot = new uPlot({width, height: 220, series, axes: [{space: 80, values: clock}, {label: title}],
    scales: {x: {time: true}}}, data, el);
  charts[id] = {plot, key};
}

function renderTimeCharts(doc) {
  const streams = doc.sources.filter((s) => s.kind === "stream" && Array.isArray(s.series));
  const quiet = "no applied events in the last 15 minutes";
  timeChart("freshness-chart", "seconds", streams, [1, 2], ["p50", "max"], quiet);
  timeChart("throughput-chart", "events/s", streams, [3], ["events/s"], quiet);
  const routes = doc.serving ? doc.serving.routes : [];
  const idle = "no requests charted yet: a point closes every interval";
  timeChart("latency-chart", "ms", routes, [1, 2], ["p50", "p99"], idle);
  timeChart("requests-chart", "requests/s", routes, [3], ["requests/s"], idle);
}

// What this API process served over the last minute: latency per route (quantiles estimated within histogram
// buckets) and each feature's statuses and ages.
function renderServing(serving) {
  const scope = serving ? `(${serving.scope}, last ${serving.last_s} s)` : "";
  document.getElementById("latency-scope").textContent = scope;
  document.getElementById("served-scope").textContent = scope;
  if (serving) document.getElementById("latency-bucket").textContent = serving.bucket_s;
  const ms = (v) => (v === null || v === undefined ? "–" : `${num(v, v < 10 ? 2 : 1)} ms`);
  rows("latency", serving ? serving.routes : [], (r) => `<tr data-route="${esc(r.name)}"><td><b>${esc(r.name)}</b></td>
    <td class="num">${num(r.requests_per_s)}</td><td class="num">${ms(r.p50_ms)}</td>
    <td class="num">${ms(r.p99_ms)}</td><td class="num">${num(r.server_errors, 0)}</td></tr>`,
  "no requests since this API process started");
  // shares of values not served fresh: above 5% they are flagged
  const pct = (v, flag) => `<td class="num ${flag && v > 0.05 ? "fresh-bad" : ""}">${num(100 * v, 1)} %</td>`;
  rows("served", serving ? serving.features : [], (f) => `<tr data-feature="${esc(f.feature)}"><td>${esc(f.feature)}</td>
    <td class="num">${num(f.values_per_s)}</td>${pct(f.share.present, false)}${pct(f.share.default, true)}
    ${pct(f.share.stale, true)}${pct(f.share.missing, true)}
    <td class="num">${age(f.age_p50_s)}</td><td class="num">${age(f.age_p99_s)}</td></tr>`,
  "no features served in the last minute");
}

// Drift: one horizontal bar per feature, plain SVG (score relative to the largest).
function renderDriftBars(drift) {
  const el = document.getElementById("drift-chart");
  const items = drift.filter((d) => typeof d.score === "number");
  if (!items.length) { el.innerHTML = ""; return; }
  const max = Math.max(...items.map((d) => d.score), 1e-9);
  const rowH = 20, labelW = 220, width = 800;
  const color = (s) => ({ok: "#1f8a4c", warn: "#b7791f", bad: "#c53030"}[statusClass(s)] || "#6b7385");
  el.innerHTML = `<svg width="${width}" height="${items.length * rowH + 4}" role="img" aria-label="drift score per feature">${
    items.map((d, i) => {
      const w = Math.max(1, (width - labelW - 60) * d.score / max);
      return `<text x="0" y="${i * rowH + 14}">${esc(d.feature)}</text>
        <rect x="${labelW}" y="${i * rowH + 3}" width="${w}" height="${rowH - 6}" fill="${color(d.status)}"></rect>
        <text x="${labelW + w + 6}" y="${i * rowH + 14}">${num(d.score, 3)}</text>`;
    }).join("")}</svg>`;
}

async function refresh() {
  try {
    const response = await fetch("/v1/dashboard", {headers: {Accept: "application/json"}});
    if (!response.ok) throw new Error(`GET /v1/dashboard answered ${response.status}`);
    render(await response.json());
    document.body.dataset.loaded = "true";
  } catch (err) {
    document.getElementById("status").textContent = `cannot load the dashboard: ${err.message}`;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
