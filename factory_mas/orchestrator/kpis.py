"""Alarm system performance (ISA-18.2 / IEC 62682 section 16, EEMUA 191), as a pure
function of the alarms' audit trail.

An activation is an annunciation: an alarm raised, or an open alarm that returned after it
had cleared. Rates are counted in fixed 10-minute periods from `since`; ISA-18.2 calls a
period with more than 10 activations (for one operator) a flood, and EEMUA 191 calls an
average of one activation per 10 minutes very likely acceptable, two manageable.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..messages import Alarm
from ..times import iso
from .logic import ACTIVE_STATES, Key, counts

PERIOD_S = 600.0
STALE_S = 86_400.0
TOP = 10
ACTIVATIONS = ("raised", "reactivated")
# The event kinds the KPIs read from the audit trail.
KINDS = (*ACTIVATIONS, "acked")


@dataclass(frozen=True)
class Event:
    alarm_id: int
    at: float  # epoch seconds
    kind: str


@dataclass(frozen=True)
class Rules:
    flood_threshold: int = 10
    chatter_count: int = 3
    chatter_window_s: float = 60.0
    period_s: float = PERIOD_S


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile, or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _subject(key: Key) -> dict[str, Any]:
    source, kind, subject = key
    what, _, name = subject.partition(":")
    return {
        "source": source,
        "type": kind,
        "machine_id": int(name) if what == "machine" and name.isdigit() else None,
        "camera_id": name if what == "camera" else None,
    }


def kpis(
    events: Iterable[Event],
    keys: dict[int, Key],
    since: float,
    until: float,
    open_alarms: Iterable[Alarm],
    now: datetime,
    rules: Rules = Rules(),
) -> dict[str, Any]:
    """The KPIs over [since, until) from the audit trail, with the standing, stale and
    shelved counts of the open alarms at `now`.

    `events` are activations and acknowledgements (any order); those before `since` are
    read only to time acknowledgements and chatter that straddle it.
    """
    period = rules.period_s
    # A sliver of a period at the end (a window a few milliseconds over) is no period.
    periods = max(1, math.ceil((until - since) / period - 1e-3))
    per_period = [0] * periods
    new = returned = 0
    by_key: Counter[Key] = Counter()
    chattering: dict[Key, int] = {}
    recent: dict[Key, deque[float]] = defaultdict(deque)
    activated_at: dict[int, float] = {}
    to_ack: list[float] = []
    for e in sorted(events, key=lambda e: (e.at, e.alarm_id)):
        if e.at >= until:
            break
        key = keys.get(e.alarm_id)
        if e.kind == "acked":
            start = activated_at.pop(e.alarm_id, None)
            if start is not None and e.at >= since:
                to_ack.append(e.at - start)
            continue
        if e.kind not in ACTIVATIONS or key is None:
            continue
        activated_at[e.alarm_id] = e.at
        window = recent[key]
        window.append(e.at)
        while window[0] <= e.at - rules.chatter_window_s:
            window.popleft()
        if e.at < since:
            continue
        if len(window) >= rules.chatter_count:
            chattering[key] = max(chattering.get(key, 0), len(window))
        per_period[int((e.at - since) // period)] += 1
        by_key[key] += 1
        if e.kind == "raised":
            new += 1
        else:
            returned += 1
    total = new + returned
    peak = max(per_period)
    flooded = sum(n > rules.flood_threshold for n in per_period)
    standing = [a for a in open_alarms if a.state in ACTIVE_STATES]
    stale = [a for a in standing if (now - a.first_seen).total_seconds() > STALE_S]
    current = counts(list(open_alarms), now)
    return {
        "since": iso(since),
        "until": iso(until),
        "period_s": period,
        "periods": periods,
        "activations": total,
        "new": new,
        "reactivated": returned,
        "activations_per_period": {
            "average": round(total / periods, 3),
            "peak": peak,
            "peak_at": iso(since + per_period.index(peak) * period) if total else None,
        },
        "flood": {
            "threshold": rules.flood_threshold,
            "periods": flooded,
            "pct_of_periods": round(100.0 * flooded / periods, 1),
        },
        "top": [
            {**_subject(key), "activations": n, "pct": round(100.0 * n / total, 1)}
            for key, n in by_key.most_common(TOP)
        ],
        "chattering": {
            "rule": f">= {rules.chatter_count} activations within {rules.chatter_window_s:g} s",
            "count": len(chattering),
            "alarms": [
                {**_subject(key), "max_in_window": n}
                for key, n in sorted(chattering.items(), key=lambda kv: -kv[1])[:TOP]
            ],
        },
        "time_to_ack_s": {
            "count": len(to_ack),
            "p50": _percentile(to_ack, 50),
            "p90": _percentile(to_ack, 90),
        },
        "now": {
            "at": now.isoformat(),
            "standing": len(standing),
            "stale": len(stale),
            "stale_after_s": STALE_S,
            "shelved": current["shelved"],
            "open": current["open"],
            "unacknowledged": current["unacknowledged"],
        },
    }
