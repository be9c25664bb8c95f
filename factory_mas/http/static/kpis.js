// Alarm performance panel on the overview (ISA-18.2 / IEC 62682 section 16, EEMUA 191),
// from GET /api/orchestrator/kpis over the chosen window; refreshed every 30 s.

import { api } from "./api.js";
import { esc, every, fmtDuration, fmtNum, fmtTime } from "./util.js";

const POLL_MS = 30_000;
// ISA-18.2: more than 10 activations in 10 minutes (for one operator) is a flood.
const FLOOD_ABOVE = 10;

const $ = (sel) => document.querySelector(sel);
const testid = (id) => $(`#alarm-kpis [data-testid="${id}"]`);

let stop = null;
let loadSeq = 0;
// The server's clock minus this browser's (ms), from the last answer, so that "the last
// hour" is the server's last hour even when the two clocks disagree.
let clockOffsetMs = 0;

function setText(id, text) {
  testid(id).textContent = text;
}

function where(row) {
  if (row.machine_id != null) return `machine ${row.machine_id}`;
  return row.camera_id || "–";
}

function topRow(row) {
  return (
    `<tr><td>${esc(row.source)}</td><td>${esc(row.type)}</td><td>${esc(where(row))}</td>` +
    `<td class="num">${esc(fmtNum(row.activations))}</td>` +
    `<td class="num">${esc(fmtNum(row.pct))} %</td></tr>`
  );
}

function render(k, windowS) {
  const rate = k.activations_per_period || {};
  const periodMin = Math.round((k.period_s || 600) / 60);
  setText("kpi-activations", fmtNum(k.activations));
  setText("kpi-activations-split", `${fmtNum(k.new)} new, ${fmtNum(k.reactivated)} returned`);
  for (const [id, value] of [
    ["kpi-avg", rate.average],
    ["kpi-peak", rate.peak],
  ]) {
    setText(id, fmtNum(value, 2));
    testid(id).classList.toggle("bad", typeof value === "number" && value > FLOOD_ABOVE);
  }
  setText("kpi-peak-at", rate.peak_at ? `in the ${periodMin} min from ${fmtTime(rate.peak_at)}` : "");

  const flood = k.flood || {};
  setText("kpi-flood-pct", `${fmtNum(flood.pct_of_periods)} %`);
  setText(
    "kpi-flood-periods",
    `${fmtNum(flood.periods)} of ${fmtNum(k.periods)} periods with > ${fmtNum(flood.threshold)}`,
  );
  setText("kpi-chattering", fmtNum(k.chattering?.count));
  setText("kpi-chattering-rule", k.chattering?.rule || "");

  const now = k.now || {};
  setText("kpi-standing", fmtNum(now.standing));
  setText("kpi-stale", fmtNum(now.stale));
  setText("kpi-shelved", fmtNum(now.shelved));

  const ack = k.time_to_ack_s || {};
  setText("kpi-ack-p50", fmtDuration(ack.p50));
  setText("kpi-ack-p90", fmtDuration(ack.p90));
  setText("kpi-ack-count", `${fmtNum(ack.count ?? 0)} acknowledged`);

  const top = k.top || [];
  testid("kpi-top").innerHTML = top.length
    ? top.map(topRow).join("")
    : '<tr><td colspan="5" class="muted">No activations in this window.</td></tr>';
  setText("kpi-range", `${fmtTime(k.since)} – ${fmtTime(k.until)}`);
  // Which window the figures on screen are for (a test waits on it after a change).
  $("#alarm-kpis").dataset.window = String(windowS);
}

async function load() {
  const windowS = Number($("#kpi-window").value) || 86_400;
  const seq = ++loadSeq;
  const sent = Date.now();
  // Whole seconds and an explicit until: the server counts periods from since, and a
  // window a hair longer than asked would add a partial period to the average and the
  // flood percentage.
  const until = Math.ceil((sent + clockOffsetMs) / 1000);
  const since = until - windowS;
  const k = await api(`/api/orchestrator/kpis?since=${since}&until=${until}`);
  const serverNow = Date.parse(k.now?.at);
  if (Number.isFinite(serverNow)) clockOffsetMs = serverNow - (sent + Date.now()) / 2;
  if (seq !== loadSeq) return; // a newer request (another window) is under way
  render(k, windowS);
}

function restart() {
  stop?.();
  stop = every(POLL_MS, load);
}

let wired = false;
export const panel = {
  enter() {
    if (!wired) {
      wired = true;
      $("#kpi-window").addEventListener("change", () => {
        if (stop) restart();
      });
    }
    restart();
  },
  leave() {
    stop?.();
    stop = null;
    loadSeq++; // drop an answer still on its way
  },
};
