"""History beyond the agents' in-memory rings, in the store: predictions (written by
`writer`, queried back by `reader`) and the raw telemetry (written by `historian`, read by
`telemetry`, served and exported by `export`)."""

from .export import TelemetryApi
from .historian import TelemetryHistorian
from .reader import HistoryQuery, StoredHistory, newest, query
from .writer import HistoryWriter

__all__ = [
    "HistoryQuery",
    "HistoryWriter",
    "StoredHistory",
    "TelemetryApi",
    "TelemetryHistorian",
    "newest",
    "query",
]
