// Cohort's web UI: one small script, no build step, no library. It polls
// the JSON API (/api/v1/...) every two seconds and redraws the tab shown.
"use strict";

const REFRESH_MS = 2000;
const view = document.getElementById("view");
let selectedJob = null;
let sqlResult = null;

const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const state = (s) => `<span class="state ${esc(s)}">${esc(s)}</span>`;
const cores = (m) => (m / 1000).toFixed(m % 1000 ? 1 : 0);
const bytes = (b) => {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(b >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
};
const clock = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");
const pct = (a, b) => (b > 0 ? Math.min(100, (100 * a) / b) : 0);
const bar = (used, total, label, cls = "") =>
  `<div class="bar ${cls}"><div style="width:${pct(used, total).toFixed(1)}%"></div><span>${esc(label)}</span></div>`;
const table = (head, rows) => rows.length
  ? `<table><tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>${rows.join("")}</table>`
  : `<p class="muted">None.</p>`;
const live = (slot) => ["starting", "running", "stopping"].includes(slot.state);
const nodesOf = (job) => [...new Set(job.slots.filter(live).map((s) => s.node))];

// The API takes a bearer token: from `?token=...` once (then kept in this
// browser's storage and dropped from the address bar), or typed in below.
const TOKEN_KEY = "cohort-token";
(() => {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    localStorage.setItem(TOKEN_KEY, given);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
})();

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const token = localStorage.getItem(TOKEN_KEY);
  const headers = { ...(options.headers || {}), ...(token ? { authorization: `Bearer ${token}` } : {}) };
  const r = await fetch(`/api/v1/${path}`, { ...options, headers });
  const body = await r.json();
  if (r.status === 401) throw new Unauthorized(body.error || r.statusText);
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function askForToken(why) {
  view.innerHTML = `<section><h2>A token is needed</h2><p class="muted">${esc(why)}</p>
    <p>Paste a token (<code>cohort token create --role submit --queue Q</code>, or the admin token
    <code>cohort up</code> wrote to <code>~/.config/cohort/config.toml</code>):</p>
    <input id="token-text" type="password" size="60" autocomplete="off"> <button id="token-save">Use it</button></section>`;
}

// A line chart of `series` ([{name, color, points: [[x, y]]}]) as inline SVG.
function chart(series, { yMax, yLabel }) {
  const W = 600, H = 180, L = 36, B = 18;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  if (xs.length === 0) return `<p class="muted">No samples yet (one every 10 s).</p>`;
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const top = yMax ?? Math.max(1, ...series.flatMap((s) => s.points.map((p) => p[1])));
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - 4);
  const Y = (y) => 10 + (1 - y / top) * (H - B - 14);
  const lines = series.map((s) =>
    `<polyline fill="none" stroke="${s.color}" stroke-width="1.6" points="${
      s.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ")}"/>`).join("");
  const grid = [0, 0.5, 1].map((f) =>
    `<line x1="${L}" x2="${W}" y1="${Y(top * f)}" y2="${Y(top * f)}" stroke="#e5e7eb"/>` +
    `<text x="2" y="${Y(top * f) + 3}">${esc(Math.round(top * f))}${esc(yLabel)}</text>`).join("");
  const times = `<text x="${L}" y="${H - 2}">${esc(clock(x0))}</text>` +
    `<text x="${W - 60}" y="${H - 2}">${esc(clock(x1))}</text>`;
  const legend = series.map((s) => `<span><i style="background:${s.color}"></i>${esc(s.name)}</span>`).join("");
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${grid}${lines}${times}</svg>
    <div class="legend">${legend}</div>`;
}

const tabs = {
  async overview() {
    const [status, nodes, jobs, queues, samples] = await Promise.all([
      api("status"), api("nodes"), api("jobs"), api("queues"), api("utilization")]);
    const up = nodes.filter((n) => n.state !== "lost");
    const sum = (f) => up.reduce((a, n) => a + f(n), 0);
    const cpu = [sum((n) => n.allocated_cpu_millis), sum((n) => n.cpu_millis)];
    const mem = [sum((n) => n.allocated_memory_bytes), sum((n) => n.memory_bytes)];
    const count = (s) => jobs.filter((j) => j.state === s).length;
    const pending = jobs.filter((j) => j.state === "pending");
    const running = jobs.filter((j) => j.state === "running");
    const series = [
      { name: "cpu allocated %", color: "#2563eb",
        points: samples.map((s) => [s.at_ms, pct(s.cpu_allocated_cores, s.cpu_capacity_cores)]) },
      { name: "memory allocated %", color: "#7c3aed",
        points: samples.map((s) => [s.at_ms, pct(s.memory_allocated_bytes, s.memory_capacity_bytes)]) },
    ];
    return `
      <section><div class="kpis">
        <div class="kpi"><b>${up.length}</b>nodes up (${nodes.length - up.length} lost)</div>
        <div class="kpi"><b>${count("running")}</b>running</div>
        <div class="kpi"><b>${count("pending")}</b>pending</div>
        <div class="kpi"><b>${cores(cpu[0])} / ${cores(cpu[1])}</b>cores allocated</div>
        <div class="kpi"><b>${bytes(mem[0])} / ${bytes(mem[1])}</b>memory allocated</div>
        <div class="kpi"><b>${esc(status.kafka_bootstrap || "none")}</b>Kafka${status.kafka_embedded ? " (embedded, in memory)" : ""}</div>
      </div></section>
      <section><h2>Cluster utilization, last hour</h2>${chart(series, { yMax: 100, yLabel: "%" })}</section>
      <div class="grid">
        <section><h2>Queues</h2>${table(["queue", "share", "guarantee", "cap", "pending"], queues.map((q) =>
          `<tr><td>${esc(q.name)}</td><td>${bar(q.share, 1, `${(100 * q.share).toFixed(0)}%`)}</td>
           <td>${(100 * q.guarantee).toFixed(0)}%</td><td>${(100 * q.cap).toFixed(0)}%</td><td>${q.pending}</td></tr>`))}</section>
        <section><h2>Pending, and why</h2>${table(["job", "kind", "priority", "queue", "reason"], pending.map((j) =>
          `<tr><td>${esc(j.name)}</td><td>${esc(j.kind)}</td><td>${esc(j.priority)}</td><td>${esc(j.queue)}</td>
           <td>${esc(j.reason)}</td></tr>`))}</section>
      </div>
      <section><h2>Running now</h2>${table(["job", "kind", "state", "priority", "nodes"], running.map((j) =>
        `<tr><td>${esc(j.name)}</td><td>${esc(j.kind)}</td><td>${state(j.state)}</td><td>${esc(j.priority)}</td>
         <td>${nodesOf(j).map((n) => `<span class="chip">${esc(n)}</span>`).join("")}</td></tr>`))}</section>`;
  },

  async nodes() {
    const [nodes, jobs] = await Promise.all([api("nodes"), api("jobs")]);
    return `<section><h2>Nodes</h2>${table(["node", "state", "cpu", "memory", "slots running here"], nodes.map((n) => {
      const here = jobs.flatMap((j) => j.slots.filter((s) => live(s) && s.node === n.name)
        .map((s) => `<span class="chip">${esc(j.name)}[${s.index}] ${esc(s.state)}</span>`));
      return `<tr><td>${esc(n.name)}<div class="muted">${esc(Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(", "))}</div></td>
        <td>${state(n.state)}</td>
        <td>${bar(n.allocated_cpu_millis, n.cpu_millis, `${cores(n.allocated_cpu_millis)} / ${cores(n.cpu_millis)} cores`)}</td>
        <td>${bar(n.allocated_memory_bytes, n.memory_bytes, `${bytes(n.allocated_memory_bytes)} / ${bytes(n.memory_bytes)}`, "mem")}</td>
        <td>${here.join("") || '<span class="muted">none</span>'}</td></tr>`;
    }))}</section>`;
  },

  async jobs() {
    const jobs = (await api("jobs")).slice().reverse();
    const rows = jobs.map((j) =>
      `<tr class="pick" data-job="${j.id}"><td>${j.id}</td><td>${esc(j.name)}</td><td>${esc(j.kind)}</td>
       <td>${state(j.state)}</td><td>${j.attempts}</td><td>${esc(j.priority)}</td><td>${esc(j.queue)}</td>
       <td>${nodesOf(j).map((n) => `<span class="chip">${esc(n)}</span>`).join("")}</td><td>${esc(j.reason)}</td></tr>`);
    let detail = "";
    const job = jobs.find((j) => j.id === selectedJob);
    if (job) {
      let log = "";
      try {
        const r = await fetch(`/api/v1/jobs/${job.id}/logs?tail=4096`);
        log = r.ok ? await r.text() : (await r.json()).error;
      } catch (e) { log = String(e); }
      detail = `<section><h2>${esc(job.name)} (job ${job.id}): attempts</h2>
        ${table(["attempt", "started", "ended", "nodes", "outcome", "reason"], job.history.map((a) =>
          `<tr><td>${a.attempt}</td><td>${clock(a.started_ms)}</td><td>${clock(a.ended_ms)}</td>
           <td>${esc(a.nodes.join(", "))}</td><td>${state(a.outcome)}</td><td>${esc(a.reason)}</td></tr>`))}
        <h2>Slots</h2>${table(["slot", "node", "state", "exit"], job.slots.map((s) =>
          `<tr><td>${s.index}</td><td>${esc(s.node)}</td><td>${state(s.state)}</td><td>${s.exit_code}</td></tr>`))}
        <h2>Log of slot 0 (tail)</h2><pre>${esc(log)}</pre></section>`;
    }
    return `<section><h2>Jobs (newest first; click one for its history and log)</h2>
      ${table(["id", "name", "kind", "state", "attempts", "priority", "queue", "nodes", "reason"], rows)}</section>${detail}`;
  },

  async services() {
    const services = await api("services");
    return `<section><h2>Services</h2>${table(["service", "state", "healthy / desired", "instances", "endpoints", "deployment"],
      services.map((s) => {
        const healthy = s.slots.filter((x) => live(x) && x.healthy).length;
        const instances = s.slots.filter(live).map((x) =>
          `<span class="chip">${x.index} on ${esc(x.node)}: ${esc(x.state)}${x.healthy ? ", healthy" : x.healthy === false ? ", unhealthy" : ""}</span>`);
        const endpoints = s.endpoints.map((e) =>
          `<span class="chip">${esc(e.host)}:${esc(Object.values(e.ports)[0] ?? "")}</span>`);
        const d = s.deployment;
        return `<tr><td>${esc(s.name)}</td><td>${state(s.state)}</td><td>${healthy} / ${s.instances}</td>
          <td>${instances.join("")}</td><td>${endpoints.join("")}</td>
          <td>${d ? `${state(d.state)} ${d.healthy_new} new, ${d.healthy_old} old ${esc(d.reason)}` : ""}</td></tr>`;
      }))}</section>`;
  },

  async pipelines() {
    const pipelines = await api("pipelines");
    const colors = ["#2563eb", "#7c3aed", "#059669", "#d97706", "#dc2626", "#0891b2", "#4b5563", "#db2777"];
    return pipelines.map((p) => {
      const partitions = [...new Set(p.lag_history.flatMap((s) => Object.keys(s.partitions)))];
      const series = partitions.map((part, i) => ({
        name: `partition ${part}`, color: colors[i % colors.length],
        points: p.lag_history.filter((s) => part in s.partitions).map((s) => [s.at_ms, s.partitions[part]]),
      }));
      const members = p.members.map((m) =>
        `<tr><td>${m.member}</td><td>${esc(m.node)}</td><td>${state(m.state)}</td><td>${m.in_per_s ?? ""}</td>
         <td>${m.out_per_s ?? ""}</td><td>${m.in ?? ""}</td><td>${m.bad ?? ""}</td><td>${m.dead_lettered ?? ""}</td></tr>`);
      const parts = p.partitions.map((x) =>
        `<tr><td>${x.partition}</td><td>${x.committed ?? "none"}</td><td>${x.end}</td><td>${x.lag}</td></tr>`);
      return `<section><h2>Pipeline ${esc(p.name)}: ${state(p.state)} · ${esc(p.topic)} → ${esc(p.sink)} · lag ${p.lag}</h2>
        ${p.reason ? `<p class="muted">${esc(p.reason)}</p>` : ""}
        ${p.lag_error ? `<p class="error">${esc(p.lag_error)}</p>` : ""}
        <div class="grid"><div>${table(["member", "node", "state", "in/s", "out/s", "records in", "bad", "dead-lettered"], members)}
        ${table(["partition", "committed", "end", "lag"], parts)}</div>
        <div><h2>Lag per partition</h2>${chart(series, { yLabel: "" })}</div></div></section>`;
    }).join("") || `<section><h2>Pipelines</h2><p class="muted">None. Create one with cohort pipeline create FILE.</p></section>`;
  },

  async sql() {
    const recent = await api("queries");
    const box = document.getElementById("sql-text");
    const text = box ? box.value : "SHOW TABLES";
    let result = "";
    if (sqlResult?.error) result = `<p class="error">${esc(sqlResult.error)}</p>`;
    else if (sqlResult?.rows) {
      result = `<p class="muted">${sqlResult.row_count} row(s) in ${sqlResult.duration_ms.toFixed(1)} ms${sqlResult.truncated ? " (first 1000 shown)" : ""}</p>` +
        table(sqlResult.columns, sqlResult.rows.map((r) => `<tr>${sqlResult.columns.map((c) => `<td>${esc(r[c])}</td>`).join("")}</tr>`));
    } else if (sqlResult) result = `<p class="muted">done: ${esc(sqlResult.rows_affected ?? "catalog changed")} in ${sqlResult.duration_ms.toFixed(1)} ms</p>`;
    return `<section><h2>Run SQL</h2><textarea id="sql-text" spellcheck="false">${esc(text)}</textarea>
      <button id="sql-run">Run</button>${result}</section>
      <section><h2>Running and recent queries</h2>${table(["started", "query", "duration", "rows", "ran on", "outcome"], recent.map((q) =>
        `<tr><td>${clock(q.started_ms)}</td><td><code>${esc(q.sql)}</code>${q.error ? `<div class="error">${esc(q.error)}</div>` : ""}</td>
         <td>${q.duration_ms.toFixed(1)} ms</td><td>${q.rows}</td>
         <td>${q.outcome === "running" ? "" : q.workers ? `${q.workers} worker(s)` : "coordinator"}</td><td>${state(q.outcome)}</td></tr>`))}</section>`;
  },
};

function current() {
  const name = location.hash.slice(1);
  return name in tabs ? name : "overview";
}

let drawing = false;
async function draw() {
  if (drawing) return;
  // Do not redraw under someone typing a query or a token.
  if (["sql-text", "token-text"].includes(document.activeElement?.id)) return;
  drawing = true;
  const name = current();
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.hash === `#${name}`));
  try {
    const status = await api("status");
    document.getElementById("cluster").textContent =
      `coordinator ${status.coordinator} · ${status.agents} agent(s)`;
    view.innerHTML = await tabs[name]();
    view.dataset.tab = name;
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e instanceof Unauthorized) askForToken(e.message);
    else view.innerHTML = `<section><p class="error">${esc(e.message)}</p></section>`;
  } finally {
    drawing = false;
  }
}

view.addEventListener("click", async (event) => {
  const row = event.target.closest("tr[data-job]");
  if (row) {
    selectedJob = Number(row.dataset.job);
    draw();
  }
  if (event.target.id === "token-save") {
    localStorage.setItem(TOKEN_KEY, document.getElementById("token-text").value.trim());
    document.activeElement.blur();
    draw();
  }
  if (event.target.id === "sql-run") {
    const sql = document.getElementById("sql-text").value;
    try {
      sqlResult = await api("sql", { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ sql }) });
    } catch (e) {
      sqlResult = { error: e.message };
    }
    draw();
  }
});
window.addEventListener("hashchange", draw);
draw();
setInterval(draw, REFRESH_MS);
