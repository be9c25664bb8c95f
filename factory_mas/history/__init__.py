"""Prediction history beyond the agents' in-memory rings: written to the store (`writer`),
queried back (`reader`)."""

from .reader import HistoryQuery, StoredHistory, newest, query
from .writer import HistoryWriter

__all__ = ["HistoryQuery", "HistoryWriter", "StoredHistory", "newest", "query"]
