// The plant's event log on the alarms page: a form to log maintenance, a failure or an
// incident, and the latest labels (these and operators' verdicts on alarms). Models learn
// from them; docs/api.md, "Labels".

import { api } from "./api.js";
import { esc, fmtTime, toast } from "./util.js";

const RECENT = 20;
const KIND_TEXT = {
  maintenance: "maintenance",
  failure: "failure",
  incident: "incident",
  alarm_feedback: "verdict on alarm",
};

/** An operator's verdict on an alarm, in words. */
export const VERDICT_TEXT = { confirmed: "confirmed", false_alarm: "false alarm" };

const $ = (sel) => document.querySelector(sel);

function item(lb) {
  const where = lb.machine_id != null ? `machine ${lb.machine_id}` : "plant";
  const alarm = lb.alarm_id != null ? ` · alarm ${lb.alarm_id}` : "";
  const said = lb.kind === "alarm_feedback" ? VERDICT_TEXT[lb.detail] || lb.detail : lb.detail;
  const detail = said ? ` <b>${esc(said)}</b>` : "";
  const note = lb.comment ? `<div class="small">${esc(lb.comment)}</div>` : "";
  return (
    `<li data-testid="label" data-kind="${esc(lb.kind)}" data-label-id="${lb.id}">` +
    `<span class="muted">${esc(fmtTime(lb.start))}</span> ${esc(KIND_TEXT[lb.kind] || lb.kind)}${detail} ` +
    `<span class="muted small">${esc(where)}${esc(alarm)}${lb.by ? ` · by ${esc(lb.by)}` : ""}</span>${note}</li>`
  );
}

/** Reload the list of recent labels (after a change, or when the page is shown). */
export async function refresh() {
  try {
    const body = await api(`/api/labels?order=newest&limit=${RECENT}`);
    $("#labels-list").innerHTML = body.labels.length
      ? body.labels.map(item).join("")
      : `<li class="muted empty">Nothing logged yet.</li>`;
  } catch (err) {
    toast(`Event log: ${err.message}`, "error");
  }
}

// The input is local time; the API takes ISO 8601 with its zone.
function startOf(value) {
  const at = value ? new Date(value) : new Date();
  return Number.isNaN(at.getTime()) ? null : at.toISOString();
}

function localNow() {
  const now = new Date();
  now.setMinutes(now.getMinutes() - now.getTimezoneOffset(), 0, 0);
  return now.toISOString().slice(0, 16);
}

function showDetailField() {
  const incident = $("#label-kind").value === "incident";
  $("#label-incident-field").hidden = !incident;
  $("#label-detail-field").hidden = incident;
}

async function send(ev) {
  ev.preventDefault();
  const kind = $("#label-kind").value;
  const start = startOf($("#label-start").value);
  if (!start) return toast("Give the time it happened.", "error");
  const machine = $("#label-machine").value.trim();
  const body = {
    kind,
    start,
    detail: kind === "incident" ? $("#label-incident").value : $("#label-detail").value.trim(),
    comment: $("#label-comment").value.trim(),
  };
  if (machine) body.machine_id = Number(machine);
  try {
    await api("/api/labels", { method: "POST", body });
  } catch (err) {
    return toast(`Not logged: ${err.message}`, "error");
  }
  toast(`Logged: ${KIND_TEXT[kind]}${machine ? ` on machine ${machine}` : ""}.`);
  $("#label-detail").value = "";
  $("#label-comment").value = "";
  refresh();
}

let wired = false;
export function wire() {
  if (wired) return;
  wired = true;
  $("#label-start").value = localNow();
  $("#label-kind").addEventListener("change", showDetailField);
  $("#label-form").addEventListener("submit", send);
  showDetailField();
}
