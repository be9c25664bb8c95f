// factory_mas dashboard: the shell (hash router, key dialog, live socket) and the
// overview page. Each other page lives in its own module exposing enter()/leave().

import { api, getKey, onAuthNeeded, setKey } from "./api.js";
import { LiveSocket } from "./live.js";
import { decisionItem, esc, every, fmtNum, fmtTime, toast } from "./util.js";
import * as alarms from "./alarms.js";
import * as kpis from "./kpis.js";
import * as machines from "./machines.js";
import * as shifts from "./shifts.js";

const POLL_MS = 5000; // never poll faster than this (issue 10)

// -- shared live state: the orchestrator's system state, kept fresh by the socket ----

const state = { system: null, lastUpdate: null };
let refreshTimer = 0;

function applySystemState(sys) {
  state.system = sys;
  state.lastUpdate = sys.last_update || new Date().toISOString();
  renderAlarmSummary();
  renderFlood(sys.flood);
}

// Alarm frames change the counts; one system-state fetch a second at most recomputes
// them (during a flood the socket's alarms alone would not say which are grouped).
function scheduleStateRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = 0;
    try {
      applySystemState(await api("/api/orchestrator/system-state"));
    } catch {
      /* the next frame or poll tries again */
    }
  }, 1000);
}

function onFrame({ type, data }) {
  if (type === "hello") applySystemState(data);
  else if (type === "alarm") {
    alarms.onAlarm(data);
    scheduleStateRefresh();
  } else if (type === "decision") {
    if (state.system) state.system.decisions = [data, ...state.system.decisions].slice(0, 50);
    state.lastUpdate = data.timestamp;
    renderDecisions();
  } else if (type === "flood") renderFlood(data);
}

const live = new LiveSocket("/api/orchestrator/ws", onFrame);

// -- overview ---------------------------------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);
const testid = (id) => $(`[data-testid="${id}"]`);

function renderFlood(flood) {
  const el = $("#flood-banner");
  if (!flood || !flood.active) {
    el.hidden = true;
    return;
  }
  // ISA-18.2 counts activations: new alarms and alarms that returned after clearing.
  const minutes = Math.round(flood.window_s / 60);
  el.textContent =
    `Alarm flood: ${flood.activations_in_window} activations in the last ${minutes} min` +
    ` (${flood.new_alarms_in_window} new alarms, ${flood.reactivated_in_window} returned;` +
    ` since ${fmtTime(flood.since)}). Alarms below ${flood.grouped_below} are grouped.`;
  el.hidden = false;
}

function renderAlarmSummary() {
  const counts = state.system?.alarm_counts;
  if (!counts) return;
  const byState = counts.by_state || {};
  testid("alarms-open").textContent = counts.open;
  testid("alarms-unacked").textContent =
    counts.unacknowledged ?? (byState.ACTIVE_UNACK || 0) + (byState.CLEARED_UNACK || 0);
  const active = testid("alarms-active");
  if (active) active.textContent = counts.active ?? "";
  for (const li of document.querySelectorAll('[data-testid="level-count"]')) {
    const n = (counts.by_level || {})[li.dataset.level] || 0;
    li.querySelector("b").textContent = n;
    li.classList.toggle("active", n > 0); // colour only when abnormal
  }
  testid("last-update").textContent = fmtTime(state.lastUpdate);
  renderDecisions();
}

function renderDecisions() {
  const list = (state.system?.decisions || []).slice(0, 8);
  $("#overview-decisions").innerHTML = list.length
    ? list.map(decisionItem).join("")
    : '<li class="muted">No decisions yet.</li>';
}


// Records per second from the ingest totals of two polls of /status.
let lastTotals = null;
const sum = (obj) => Object.values(obj || {}).reduce((a, b) => a + b, 0);

function renderRates(status) {
  const now = performance.now();
  const totals = { at: now, ok: sum(status.ingest.accepted), bad: sum(status.ingest.rejected) };
  if (lastTotals && now > lastTotals.at) {
    const dt = (now - lastTotals.at) / 1000;
    testid("records-per-s").textContent = fmtNum(Math.max(0, totals.ok - lastTotals.ok) / dt);
    testid("rejected-per-s").textContent = fmtNum(Math.max(0, totals.bad - lastTotals.bad) / dt);
  }
  lastTotals = totals;
}

// One entry per component: [name, ok, text].
function components(health, status) {
  const c = health.components || {};
  const out = [["store", c.store === true, c.store ? "ok" : "down"]];
  for (const [id, st] of Object.entries(c.agents || {})) {
    out.push([id, st === "running" || st === "disabled", st]);
  }
  out.push(["orchestrator", c.orchestrator === "running", c.orchestrator]);
  const mqtt = c.mqtt_connected;
  out.push(["mqtt", mqtt !== false, mqtt === null ? "off" : mqtt ? "connected" : "disconnected"]);
  const scada = c.scada;
  const scadaOk = scada === "ok" || scada === "off";
  out.push(["scada", scadaOk, scadaOk ? scada : JSON.stringify(scada)]);
  const replay = c.replay;
  out.push(["replay", replay !== false, replay === "off" ? "off" : replay ? "running" : "stopped"]);
  const backlog = status?.backlog;
  if (backlog) out.push(["backlog", !!backlog.running, backlog.running ? `running (${backlog.generator})` : "stopped"]);
  return out;
}

function renderComponents(list) {
  $("#components").innerHTML = list
    .map(
      ([name, ok, text]) =>
        `<li data-testid="component" data-name="${esc(name)}" data-ok="${ok}" class="${ok ? "" : "bad"}">` +
        `<span class="name">${esc(name)}</span> <span class="val">${esc(text ?? "")}</span></li>`,
    )
    .join("");
}

async function pollOverview() {
  const [health, status] = await Promise.all([
    api("/health", { accept: [503] }),
    api("/status"),
  ]);
  renderComponents(components(health, status));
  renderRates(status);
  // Without the socket, the poll is also where alarm counts come from.
  if (!live.live) applySystemState(await api("/api/orchestrator/system-state"));
}

const overview = {
  stop: null,
  enter() {
    renderAlarmSummary();
    this.stop = every(POLL_MS, pollOverview);
    kpis.panel.enter();
  },
  leave() {
    this.stop?.();
    kpis.panel.leave();
  },
};

// -- router -----------------------------------------------------------------------------

const PAGES = {
  overview,
  alarms: alarms.page,
  machines: machines.machinesPage,
  machine: machines.machinePage,
  ppe: machines.ppePage,
  shifts: shifts.shiftsPage,
  points: shifts.pointsPage,
};
let current = null;

function route() {
  const [, name = "overview", arg] = location.hash.match(/^#\/([a-z]+)(?:\/(.+))?/) || [];
  const page = PAGES[name] ? name : "overview";
  current?.page.leave();
  for (const section of document.querySelectorAll("main > .page")) {
    section.hidden = section.id !== `page-${page}`;
  }
  for (const a of document.querySelectorAll("nav a[data-page]")) {
    const on = a.dataset.page === page || (page === "machine" && a.dataset.page === "machines");
    if (on) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  current = { page: PAGES[page] };
  current.page.enter(arg ? decodeURIComponent(arg) : undefined);
}

// -- key dialog -------------------------------------------------------------------------

function openKeyDialog() {
  const dialog = $("#key-dialog");
  if (dialog.open) return;
  $("#key-input").value = getKey();
  dialog.showModal();
}

function setupKeyDialog() {
  const dialog = $("#key-dialog");
  $("#key-button").addEventListener("click", openKeyDialog);
  $("#key-cancel").addEventListener("click", () => dialog.close());
  $("#key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    setKey($("#key-input").value.trim());
    dialog.close();
    toast("Key saved for this tab.");
    live.restart();
    route(); // reload the current page with the key
  });
  onAuthNeeded(openKeyDialog);
}

setupKeyDialog();
window.addEventListener("hashchange", route);
if (!location.hash) history.replaceState(null, "", "#/overview");
route();
live.start();
