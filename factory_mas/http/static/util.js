// Small shared helpers: escaping, formatting, toasts, SVG sparklines.

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escape text for use inside innerHTML (element content or a quoted attribute). */
export const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ESC[c]);

export const LEVELS = ["NORMAL", "CAUTION", "WARNING", "CRITICAL", "EMERGENCY"];
export const rank = (level) => Math.max(0, LEVELS.indexOf(level));
export const worst = (a, b) => (rank(b) > rank(a) ? b : a);

// One formatter for all: toLocaleString() with options builds a new one per call, which
// alone took half a second for 1,000 alarm rows.
const TIME_FORMAT = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });

/** A short local time for an ISO string, epoch seconds or Date. */
export function fmtTime(v) {
  if (v === null || v === undefined || v === "") return "–";
  const d = typeof v === "number" ? new Date(v * 1000) : new Date(v);
  if (Number.isNaN(d.getTime())) return String(v);
  return TIME_FORMAT.format(d);
}

export function fmtNum(v, digits = 1) {
  if (v === null || v === undefined || v === "") return "–";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : v.toFixed(digits);
}

/** A duration in seconds, short: "4.2 s", "42 s", "3.5 min", "2.0 h", "1.5 d"; "–" for none. */
export function fmtDuration(s) {
  if (typeof s !== "number" || !Number.isFinite(s)) return "–";
  if (s < 10) return `${s.toFixed(1).replace(/\.0$/, "")} s`;
  if (s < 59.5) return `${Math.round(s)} s`;
  if (s < 3600) return `${(s / 60).toFixed(1)} min`;
  if (s < 86_400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86_400).toFixed(1)} d`;
}

/** One orchestrator decision as a list item (overview and machine pages). */
export function decisionItem(d) {
  const where = d.plan.machine_id ? `machine ${d.plan.machine_id}` : d.plan.camera_id || "";
  return (
    `<li class="lvl-${esc(d.level)}"><span class="tag" data-level="${esc(d.level)}">${esc(d.level)}</span> ` +
    `<b>${esc(d.plan.action)}</b> P${esc(d.plan.priority)} ${esc(where)} ` +
    `<span class="muted">${esc(fmtTime(d.timestamp))} · SMS ${esc(d.notified?.status || "–")}</span>` +
    `<div class="small">${esc(d.plan.rationale)}</div></li>`
  );
}

let toastTimer = 0;
/** Show a message in #toast for a few seconds; errors get the error style. */
export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 6000);
}

/** Run `job` now and every `ms` until the returned stop() is called. */
export function every(ms, job) {
  let stopped = false;
  let timer = 0;
  const tick = async () => {
    try {
      await job();
    } catch (err) {
      if (!stopped) toast(err.message, "error");
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

const SVG = "http://www.w3.org/2000/svg";

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

/**
 * A sparkline: `series` is [{values: [number|null], cls}], all on one shared y scale,
 * oldest first; `marks` are indexes drawn as dots (anomalies).
 */
export function sparkline(series, { marks = [], width = 320, height = 70 } = {}) {
  const all = series.flatMap((s) => s.values).filter((v) => typeof v === "number");
  const svg = svgEl("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "spark",
    role: "img",
    preserveAspectRatio: "none",
  });
  if (!all.length) return svg;
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  if (hi === lo) {
    hi += 1;
    lo -= 1;
  }
  const n = Math.max(...series.map((s) => s.values.length));
  const x = (i) => (n <= 1 ? width / 2 : (i / (n - 1)) * (width - 4) + 2);
  const y = (v) => height - 3 - ((v - lo) / (hi - lo)) * (height - 6);
  for (const s of series) {
    const pts = s.values
      .map((v, i) => (typeof v === "number" ? `${x(i).toFixed(1)},${y(v).toFixed(1)}` : null))
      .filter(Boolean)
      .join(" ");
    svg.append(svgEl("polyline", { points: pts, class: `line ${s.cls || ""}` }));
  }
  const base = series[0].values;
  for (const i of marks) {
    if (typeof base[i] === "number") {
      svg.append(svgEl("circle", { cx: x(i), cy: y(base[i]), r: 3, class: "mark" }));
    }
  }
  return svg;
}
