// Alarms page: a table of up to 1,000 alarms, newest first, updated row by row from the
// orchestrator socket; ack / shelve / unshelve / comment actions, the operator's verdict
// (confirmed / false alarm), the audit trail, and the plant's event log (labels.js).

import { api } from "./api.js";
import * as labels from "./labels.js";
import { esc, fmtTime, toast } from "./util.js";

const LIMIT = 1000;
const alarms = new Map(); // id -> alarm, what the table shows
let selectedId = null;
let visible = false;

const $ = (sel) => document.querySelector(sel);
const tbody = () => $("#alarms-table tbody");
const filter = () => $("#alarm-filter-state").value;

function matches(alarm) {
  const f = filter();
  if (f === "all") return true;
  if (f === "open") return alarm.state !== "CLEARED_ACK";
  return alarm.state === f;
}

// Newest first: the server's order (last_seen, then id, descending).
function newer(a, b) {
  if (a.last_seen !== b.last_seen) return a.last_seen > b.last_seen;
  return a.id > b.id;
}

const isShelved = (a) => a.shelved_until && new Date(a.shelved_until) > new Date();
const unacked = (a) => a.state === "ACTIVE_UNACK" || a.state === "CLEARED_UNACK";

function verdictTag(a) {
  if (!a.feedback) return "";
  return ` <span class="verdict" data-testid="verdict" data-verdict="${esc(a.feedback)}">${esc(labels.VERDICT_TEXT[a.feedback] || a.feedback)}</span>`;
}

function rowHtml(a) {
  const where = a.machine_id != null ? `machine ${a.machine_id}` : a.camera_id || "";
  const shelved = isShelved(a);
  const cls = [unacked(a) ? "unack" : "", shelved ? "shelved" : "", a.id === selectedId ? "selected" : ""]
    .filter(Boolean)
    .join(" ");
  const shelveBtn = shelved
    ? `<button type="button" data-action="unshelve">Unshelve</button>`
    : `<button type="button" data-action="shelve">Shelve</button>`;
  return (
    `<tr data-alarm-id="${a.id}" data-state="${esc(a.state)}" data-level="${esc(a.level)}" class="${cls}" tabindex="0">` +
    `<td>${a.id}</td>` +
    `<td><span class="tag" data-level="${esc(a.level)}">${esc(a.level)}</span>` +
    (a.highest_level !== a.level ? ` <span class="muted small">max ${esc(a.highest_level)}</span>` : "") +
    `</td><td>${esc(a.state)}${shelved ? ' <span class="muted small">shelved</span>' : ""}${verdictTag(a)}</td>` +
    `<td>${esc(a.source)}</td><td>${esc(a.type)}</td><td>${esc(where)}</td>` +
    `<td>${a.count}</td><td>${esc(fmtTime(a.last_seen))}</td>` +
    `<td class="details">${esc(a.details)}</td>` +
    `<td class="actions"><button type="button" data-action="ack">Ack</button>${shelveBtn}` +
    `<button type="button" data-action="comment">Comment</button>` +
    `<span class="verdict-buttons"><button type="button" data-action="feedback" data-verdict="confirmed">Confirmed</button>` +
    `<button type="button" data-action="feedback" data-verdict="false_alarm">False alarm</button></span></td></tr>`
  );
}

/** Render every row in one innerHTML assignment; the test reads the time it took. */
function renderAll() {
  const t0 = performance.now();
  const rows = [...alarms.values()].filter(matches).sort((a, b) => (newer(a, b) ? -1 : 1));
  tbody().innerHTML = rows.map(rowHtml).join("");
  $("#alarm-count").textContent = `${rows.length} alarm${rows.length === 1 ? "" : "s"}`;
  window.__renderTimes = { ...(window.__renderTimes || {}), alarms: performance.now() - t0 };
}

/** Replace one row in place, keeping newest-first order (an update moves it to the top). */
function renderOne(a) {
  const body = tbody();
  body.querySelector(`tr[data-alarm-id="${a.id}"]`)?.remove();
  if (matches(a)) {
    const tpl = document.createElement("template");
    tpl.innerHTML = rowHtml(a);
    const before = [...body.rows].find((tr) => newer(a, alarms.get(Number(tr.dataset.alarmId)) || a));
    body.insertBefore(tpl.content.firstElementChild, before || null);
  }
  $("#alarm-count").textContent = `${body.rows.length} alarm${body.rows.length === 1 ? "" : "s"}`;
}

/** A WS "alarm" frame: keep the map current, and the table if it is on screen. */
export function onAlarm(alarm) {
  alarms.set(alarm.id, alarm);
  if (visible) renderOne(alarm);
  if (visible && alarm.id === selectedId) showDetail(alarm.id);
}

async function load() {
  const f = filter();
  const q = f === "all" ? "" : f === "open" ? "&open=true" : `&state=${encodeURIComponent(f)}`;
  const body = await api(`/api/orchestrator/alarms?limit=${LIMIT}${q}`);
  alarms.clear();
  for (const a of body.alarms) alarms.set(a.id, a);
  renderAll();
}

async function showDetail(id) {
  selectedId = id;
  for (const tr of tbody().rows) tr.classList.toggle("selected", Number(tr.dataset.alarmId) === id);
  const pane = $("#alarm-detail");
  try {
    const { alarm, events } = await api(`/api/orchestrator/alarms/${id}`);
    const items = events
      .map(
        (e) =>
          `<li><span class="muted">${esc(fmtTime(e.at))}</span> <b>${esc(e.kind)}</b> by ${esc(e.by)} ` +
          `→ ${esc(e.state)} <span class="tag" data-level="${esc(e.level)}">${esc(e.level)}</span>` +
          (e.detail ? `<div class="small">${esc(e.detail)}</div>` : "") +
          `</li>`,
      )
      .join("");
    const verdict = alarm.feedback ? `Verdict: ${verdictTag(alarm)}` : "No verdict yet.";
    pane.innerHTML =
      `<h2>Alarm ${alarm.id}: ${esc(alarm.type)}</h2><p>${esc(alarm.details)}</p>` +
      `<p class="small muted">${esc(alarm.source)} · ${esc(alarm.state)} · seen ${alarm.count}× ` +
      `since ${esc(fmtTime(alarm.first_seen))}</p><p class="small">${verdict}</p>` +
      `<h3>Audit trail</h3><ol class="events">${items}</ol>`;
  } catch (err) {
    pane.textContent = err.message;
  }
}

async function act(id, action, extra = {}) {
  try {
    const alarm = await api(`/api/orchestrator/alarms/${id}/${action}`, {
      method: "POST",
      body: { by: "dashboard", ...extra },
    });
    onAlarm(alarm);
    toast(`Alarm ${id}: ${action} done.`);
    if (id === selectedId) showDetail(id);
    return true;
  } catch (err) {
    toast(`Alarm ${id}: ${action} failed: ${err.message}`, "error");
    return false;
  }
}

/** The operator's verdict, with the feedback comment when it is for this alarm. */
async function sendFeedback(id, verdict) {
  const box = $("#feedback-text");
  const comment = id === selectedId ? box.value.trim() : "";
  if (await act(id, "feedback", { verdict, comment })) {
    if (comment) box.value = "";
    labels.refresh();
  }
}

async function sendComment() {
  const text = $("#comment-text").value.trim();
  if (selectedId === null) return toast("Select an alarm first.", "error");
  if (!text) return $("#comment-text").focus();
  if (await act(selectedId, "comment", { text })) $("#comment-text").value = "";
}

function onTableClick(ev) {
  const tr = ev.target.closest("tr[data-alarm-id]");
  if (!tr) return;
  const id = Number(tr.dataset.alarmId);
  const action = ev.target.closest("button[data-action]")?.dataset.action;
  if (action === "ack") act(id, "ack");
  else if (action === "unshelve") act(id, "unshelve");
  else if (action === "feedback") sendFeedback(id, ev.target.closest("button").dataset.verdict);
  else if (action === "shelve") {
    const minutes = Number($("#shelve-duration").value) || 60;
    act(id, "shelve", { duration_s: minutes * 60 });
  } else if (action === "comment") {
    // Comment goes through the inline form, bound to the selected alarm.
    showDetail(id);
    if ($("#comment-text").value.trim()) sendComment();
    else $("#comment-text").focus();
  } else showDetail(id);
}

let wired = false;
function wire() {
  if (wired) return;
  wired = true;
  tbody().addEventListener("click", onTableClick);
  tbody().addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && ev.target.matches("tr[data-alarm-id]")) showDetail(Number(ev.target.dataset.alarmId));
  });
  $("#alarm-filter-state").addEventListener("change", () => load().catch((e) => toast(e.message, "error")));
  $("#comment-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sendComment();
  });
  $("#feedback-form").addEventListener("click", (ev) => {
    const verdict = ev.target.closest("button[data-verdict]")?.dataset.verdict;
    if (!verdict) return;
    if (selectedId === null) return toast("Select an alarm first.", "error");
    sendFeedback(selectedId, verdict);
  });
  labels.wire();
}

export const page = {
  enter() {
    wire();
    visible = true;
    load().catch((err) => toast(err.message, "error"));
    labels.refresh();
  },
  leave() {
    visible = false;
  },
};
