// Machines grid, one machine's charts, and PPE cameras. All read the agents' prediction
// history (newest first) and refresh every 5 s while on screen.

import { api } from "./api.js";
import { decisionItem, esc, every, fmtNum, fmtTime, sparkline, toast, worst } from "./util.js";

const POLL_MS = 5000;
const MACHINE_AGENTS = { pm: "PM", energy: "Energy", cyber: "Cyber", safety: "Safety" };
const $ = (sel) => document.querySelector(sel);

const predictions = (slug, query) =>
  api(`/api/${slug}/history?${query}`).then((body) => body.predictions);

/** The newest prediction per key (machine_id or camera_id) of a newest-first list. */
function newestBy(predictions, key) {
  const out = new Map();
  for (const p of predictions) if (p[key] != null && !out.has(p[key])) out.set(p[key], p);
  return out;
}

// -- grid -------------------------------------------------------------------------------

async function refreshGrid() {
  const slugs = Object.keys(MACHINE_AGENTS);
  const lists = await Promise.all(slugs.map((s) => predictions(s, "limit=500")));
  const machines = new Map(); // id -> {level, agents: {slug: level}}
  slugs.forEach((slug, i) => {
    for (const [id, p] of newestBy(lists[i], "machine_id")) {
      const m = machines.get(id) || { level: "NORMAL", agents: {} };
      m.level = worst(m.level, p.level);
      m.agents[slug] = p.level;
      machines.set(id, m);
    }
  });
  const ids = [...machines.keys()].sort((a, b) => a - b);
  $("#machine-grid").innerHTML = ids.length
    ? ids.map((id) => tileHtml(id, machines.get(id))).join("")
    : '<p class="muted">No predictions yet.</p>';
}

function tileHtml(id, m) {
  const agents = Object.entries(MACHINE_AGENTS)
    .map(([slug, label]) => {
      const lvl = m.agents[slug] || "NORMAL";
      return `<li data-level="${esc(lvl)}">${label} <span>${lvl === "NORMAL" ? "ok" : esc(lvl)}</span></li>`;
    })
    .join("");
  return (
    `<a class="machine tile" href="#/machine/${id}" data-machine-id="${id}" data-level="${esc(m.level)}">` +
    `<span class="tile-title">Machine ${id}</span><span class="tile-level">${esc(m.level)}</span>` +
    `<ul class="tile-agents">${agents}</ul></a>`
  );
}

export const machinesPage = {
  stop: null,
  enter() {
    this.stop = every(POLL_MS, refreshGrid);
  },
  leave() {
    this.stop?.();
  },
};

// -- one machine ------------------------------------------------------------------------

function chart(title, series, opts = {}, latest = "") {
  const fig = document.createElement("figure");
  fig.className = "chart";
  const cap = document.createElement("figcaption");
  cap.textContent = title;
  const now = document.createElement("span");
  now.className = "latest";
  now.textContent = latest;
  cap.append(" ", now);
  fig.append(cap, sparkline(series, opts));
  return fig;
}

async function refreshMachine(id) {
  const q = `machine_id=${encodeURIComponent(id)}&limit=200`;
  const [pm, energy, cyber, safety, decisions] = await Promise.all([
    ...Object.keys(MACHINE_AGENTS).map((s) => predictions(s, q).then((l) => l.slice().reverse())),
    api(`/api/orchestrator/decisions?machine_id=${encodeURIComponent(id)}&limit=20`),
  ]);
  const last = (list) => list[list.length - 1]?.result || {};
  const level = [pm, energy, cyber, safety].reduce((w, l) => worst(w, l.at(-1)?.level || "NORMAL"), "NORMAL");
  $("#h-machine").textContent = `Machine ${id}`;
  $("#page-machine").dataset.level = level;
  const anomalies = energy.map((p, i) => (p.result.is_anomaly ? i : -1)).filter((i) => i >= 0);
  const charts = [
    chart("Remaining useful life (h)", [{ values: pm.map((p) => p.result.rul_hours) }], {},
      fmtNum(last(pm).rul_hours)),
    chart("Failure probability", [{ values: pm.map((p) => p.result.failure_probability), cls: "warn" }], {},
      fmtNum(last(pm).failure_probability, 2)),
    chart("Power: consumption vs forecast (kW), anomalies marked",
      [{ values: energy.map((p) => p.result.consumption_kw) },
       { values: energy.map((p) => p.result.forecast_kw), cls: "forecast" }],
      { marks: anomalies }, `${fmtNum(last(energy).consumption_kw)} / ${fmtNum(last(energy).forecast_kw)}`),
    chart("Cyber anomaly score", [{ values: cyber.map((p) => p.result.anomaly_score) }], {},
      `threat ${last(cyber).threat_level || "–"}`),
    chart("Safety hazard score", [{ values: safety.map((p) => p.result.hazard_score), cls: "warn" }], {},
      `${fmtNum(last(safety).hazard_score, 2)} ${last(safety).hazard_type || ""}`),
  ];
  $("#machine-charts").replaceChildren(...charts);
  $("#machine-decisions").innerHTML = decisions.decisions.length
    ? decisions.decisions.map(decisionItem).join("")
    : '<li class="muted">No decisions for this machine.</li>';
}

export const machinePage = {
  stop: null,
  enter(id) {
    $("#machine-charts").replaceChildren();
    $("#machine-decisions").replaceChildren();
    if (!/^\d+$/.test(id || "")) {
      toast(`No such machine: ${id}`, "error");
      return;
    }
    this.stop = every(POLL_MS, () => refreshMachine(id));
  },
  leave() {
    this.stop?.();
    this.stop = null;
  },
};

// -- PPE --------------------------------------------------------------------------------

async function refreshPpe() {
  const list = await predictions("ppe", "limit=200");
  const cams = [...newestBy(list, "camera_id").entries()].sort(([a], [b]) => (a < b ? -1 : 1));
  $("#camera-grid").innerHTML = cams.length
    ? cams.map(([id, p]) => cameraHtml(id, p)).join("")
    : '<p class="muted">No camera frames yet.</p>';
  const violations = list.filter((p) => !p.result.compliant).slice(0, 20);
  $("#ppe-violations").innerHTML = violations.length
    ? violations
        .map(
          (p) =>
            `<li><span class="tag" data-level="${esc(p.level)}">${esc(p.level)}</span> ` +
            `${esc(p.camera_id)}: missing ${esc(p.result.missing_items.join(", "))} ` +
            `<span class="muted">${esc(fmtTime(p.record_ts))}</span></li>`,
        )
        .join("")
    : '<li class="muted">No violations in the recent frames.</li>';
}

function cameraHtml(id, p) {
  const r = p.result;
  const probs = Object.entries(r.probabilities || {})
    .map(([item, v]) => `<li>${esc(item)} <span>${Math.round(v * 100)} %</span></li>`)
    .join("");
  return (
    `<div class="camera tile" data-camera-id="${esc(id)}" data-compliant="${!!r.compliant}" data-level="${esc(p.level)}">` +
    `<span class="tile-title">${esc(id)}</span>` +
    `<span class="tile-level">${r.compliant ? "compliant" : `missing ${esc(r.missing_items.join(", "))}`}</span>` +
    `<ul class="tile-agents">${probs}</ul><span class="muted small">${esc(fmtTime(p.record_ts))}</span></div>`
  );
}

export const ppePage = {
  stop: null,
  enter() {
    this.stop = every(POLL_MS, refreshPpe);
  },
  leave() {
    this.stop?.();
  },
};
