// Shift summaries (with "summarise now") and the SCADA point table.

import { api } from "./api.js";
import { esc, every, fmtNum, fmtTime, toast } from "./util.js";

const POLL_MS = 5000;
const $ = (sel) => document.querySelector(sel);

// -- shifts -----------------------------------------------------------------------------

const FACTS = [
  ["alarms_raised", "Alarms raised"],
  ["alarms_open", "Still open"],
  ["alarms_unacknowledged", "Unacknowledged"],
  ["decisions", "Decisions"],
  ["ppe_compliance_rate", "PPE compliance"],
  ["energy_kwh", "Energy (kWh)"],
  ["energy_anomalies", "Power anomalies"],
];

function summaryHtml(s) {
  const f = s.facts || {};
  const facts = FACTS.filter(([k]) => f[k] != null)
    .map(([k, label]) => {
      const v = k === "ppe_compliance_rate" ? `${Math.round(f[k] * 100)} %` : fmtNum(f[k], 2);
      return `<dt>${label}</dt><dd>${esc(v)}</dd>`;
    })
    .join("");
  const recs = (s.recommendations || []).map((r) => `<li>${esc(r)}</li>`).join("");
  const issues = (f.top_issues || []).map((r) => `<li>${esc(r)}</li>`).join("");
  return (
    `<article class="summary" data-summary-id="${esc(s.id)}" data-partial="${!!s.partial}">` +
    `<h2>${esc(fmtTime(s.shift_start))} – ${esc(fmtTime(s.shift_end))}` +
    `${s.partial ? ' <span class="tag">partial</span>' : ""}</h2>` +
    `<p class="muted small">${esc(s.generator)}${s.note ? ` · ${esc(s.note)}` : ""}</p>` +
    `<p class="narrative">${esc(s.narrative)}</p>` +
    (recs ? `<h3>Recommendations</h3><ul class="recommendations">${recs}</ul>` : "") +
    `<h3>Key facts</h3><dl class="facts">${facts}</dl>` +
    (issues ? `<h3>Top issues</h3><ul>${issues}</ul>` : "") +
    `<p><a href="/api/backlog/summaries/${encodeURIComponent(s.id)}.md">Markdown</a></p></article>`
  );
}

async function loadSummaries() {
  const body = await api("/api/backlog/summaries?limit=20&partial=all");
  $("#shifts").innerHTML = body.summaries.length
    ? body.summaries.map(summaryHtml).join("")
    : '<p class="muted">No shift summaries yet.</p>';
}

async function generate() {
  const button = $("#generate-summary");
  button.disabled = true;
  try {
    await api("/api/backlog/generate", { method: "POST" });
    toast("Summary of the current shift written.");
    await loadSummaries();
  } catch (err) {
    const msg = err.status === 429 ? `Too soon: ${err.message}` : err.message;
    toast(msg, "error");
  } finally {
    button.disabled = false;
  }
}

let shiftsWired = false;
export const shiftsPage = {
  enter() {
    if (!shiftsWired) {
      shiftsWired = true;
      $("#generate-summary").addEventListener("click", generate);
    }
    loadSummaries().catch((err) => toast(err.message, "error"));
  },
  leave() {},
};

// -- points -----------------------------------------------------------------------------

const fmtValue = (v) => (v === null || v === undefined ? "–" : fmtNum(v, 3));

function pointRow(p) {
  return (
    `<tr data-name="${esc(p.name)}"><td class="name">${esc(p.name)}</td><td>${esc(p.type)}</td>` +
    `<td>${esc(p.unit)}</td><td class="value">${esc(fmtValue(p.value))}</td>` +
    `<td>${esc(p.modbus_table)} ${esc(p.modbus_address)}</td><td>${esc(p.dnp3_input)}</td>` +
    `<td class="path">${esc(p.opcua_path)}</td></tr>`
  );
}

// The table is built once; later polls only touch the value cells that changed.
async function refreshPoints() {
  const { points } = await api("/api/scada/points");
  const body = $("#points-table tbody");
  const rows = new Map([...body.rows].map((tr) => [tr.dataset.name, tr]));
  if (rows.size !== points.length || points.some((p) => !rows.has(p.name))) {
    body.innerHTML = points.map(pointRow).join("");
    return;
  }
  for (const p of points) {
    const cell = rows.get(p.name).querySelector("td.value");
    const text = fmtValue(p.value);
    if (cell.textContent !== text) cell.textContent = text;
  }
}

export const pointsPage = {
  stop: null,
  enter() {
    this.stop = every(POLL_MS, refreshPoints);
  },
  leave() {
    this.stop?.();
  },
};
