"""Times as the API takes them: ISO 8601 or Unix seconds, UTC when no zone is given."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime


def epoch(ts: datetime) -> float:
    """Unix seconds; a timestamp without a zone is UTC, as everywhere in factory_mas."""
    return (ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)).timestamp()


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# "+02:00" typed into a URL arrives as " 02:00" (a '+' in a query string is a space).
_LOST_PLUS = re.compile(r"^(.*\d:\d\d(:\d\d(\.\d+)?)?) (\d\d(:?\d\d)?)$")


def parse_instant(raw: str) -> float:
    """Unix seconds from ISO 8601 (no zone = UTC) or from a number of Unix seconds.

    Raises ValueError saying what is accepted.
    """
    text = raw.strip()
    if _NUMBER.fullmatch(text):
        value = float(text)
        if math.isfinite(value):
            return value
    else:
        try:
            return epoch(datetime.fromisoformat(_LOST_PLUS.sub(r"\1+\4", text)))
        except (ValueError, OverflowError):
            pass
    raise ValueError("expected an ISO 8601 time (no zone = UTC) or Unix seconds")


def iso(at: float | None) -> str | None:
    """Unix seconds as ISO 8601 in UTC; None stays None."""
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()
