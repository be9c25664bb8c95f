"""A shift summary as Markdown, for people: GET /api/backlog/summaries/{id}.md."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime

from ..levels import RANK
from ..messages import ShiftSummary


def _local(ts: datetime, zone: zoneinfo.ZoneInfo) -> datetime:
    return (ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)).astimezone(zone)


def _cell(value: object) -> str:
    """Text safe inside a table cell: no pipes, no line breaks."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _counts(counts: dict[str, int], by_level: bool = False) -> str:
    items = [(k, v) for k, v in counts.items() if v]
    if by_level:
        items.sort(key=lambda kv: (-RANK.get(kv[0], -1), kv[0]))
    else:
        items.sort(key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v:,}" for k, v in items) or "none"


def _span(start: datetime, end: datetime, tz: str) -> str:
    a, b = _local(start, zoneinfo.ZoneInfo(tz)), _local(end, zoneinfo.ZoneInfo(tz))
    if a.date() == b.date():
        return f"{a:%Y-%m-%d %H:%M} to {b:%H:%M} ({tz})"
    return f"{a:%Y-%m-%d %H:%M} to {b:%Y-%m-%d %H:%M} ({tz})"


def to_markdown(summary: ShiftSummary, tz: str = "UTC") -> str:
    """A readable report of `summary`, times shown in the zone `tz` (an IANA name)."""
    zone = zoneinfo.ZoneInfo(tz)
    f = summary.facts
    title = f"# Shift summary {_span(summary.shift_start, summary.shift_end, tz)}"
    lines = [title + (" (partial)" if summary.partial else ""), ""]
    if summary.partial:
        lines += ["> **Partial:** the shift was still in progress when this was written.", ""]
    written = _local(summary.generated_at, zone)
    about = f"Written by **{summary.generator}** at {written:%Y-%m-%d %H:%M} ({tz})"
    if summary.id:
        about += f", summary #{summary.id}"
    lines.append(about + ".")
    if summary.note:
        lines.append(f"Note: {summary.note}")
    lines += ["", "## Narrative", "", summary.narrative.strip() or "(none)", ""]
    lines += ["## Recommendations", ""]
    lines += [f"- {r.strip()}" for r in summary.recommendations] or ["- none"]
    lines += ["", "## Facts", "", "| | |", "|---|---|"]
    rows: list[tuple[str, str]] = [
        ("Alarms raised", f"{f.alarms_raised:,}"),
        ("By level", _counts(f.alarms_by_level, by_level=True)),
        ("By source", _counts(f.alarms_by_source)),
        ("Still open at shift end", f"{f.alarms_open:,}"),
        ("Acknowledged", f"{f.alarms_acknowledged:,}"),
        ("Unacknowledged", f"{f.alarms_unacknowledged:,}"),
        ("Decisions", f"{f.decisions:,} ({_counts(f.decisions_by_action)})"),
        ("Texts to the supervisor", _counts(f.sms_by_status)),
        (
            "PPE compliance",
            f"{f.ppe_compliance_rate * 100:.1f}% of {f.ppe_frames:,} frames"
            if f.ppe_compliance_rate is not None and f.ppe_frames
            else "no frames",
        ),
        ("Energy", f"{f.energy_kwh:,.1f} kWh, {f.energy_anomalies:,} anomalous readings"),
        ("Predictions by agent", _counts(f.predictions_by_agent)),
        ("Predictions by level", _counts(f.predictions_by_level, by_level=True)),
    ]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    if f.top_machines:
        lines += ["", "### Top machines", "", "| Machine | Alarms | Highest level |"]
        lines.append("|---:|---:|---|")
        lines += [
            f"| {m.machine_id} | {m.alarms:,} | {_cell(m.highest_level)} |" for m in f.top_machines
        ]
    if f.top_issues:
        lines += ["", "### Top issues", ""]
        lines += [f"{i}. {issue}" for i, issue in enumerate(f.top_issues, 1)]
    return "\n".join(lines) + "\n"
