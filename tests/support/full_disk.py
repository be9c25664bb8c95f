"""A full disk for the store's real SQLite file, without filling a real disk.

SQLite's `PRAGMA max_page_count` caps how many pages the database may grow to; a write
that needs more fails with SQLITE_FULL ("database or disk is full"), exactly the error a
full disk gives. The pragma lasts as long as a connection, so it is set on every checkout
from the store's pool: every store call sees the limit of the moment, whichever
connection it gets.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from factory_mas.store import Store

# SQLite's own ceiling: setting it lifts any limit set before.
NO_LIMIT_PAGES = 4_294_967_294


class PageLimit:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.pages = NO_LIMIT_PAGES
        sa.event.listen(store.engine, "checkout", self._apply)

    def _apply(self, dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA max_page_count = {self.pages}")
        cursor.close()

    async def allow(self, extra_pages: int) -> None:
        """From the next store call on, let the file grow by `extra_pages` pages only."""
        used = await self.store.read(_page_count)
        self.pages = used + extra_pages

    def lift(self) -> None:
        self.pages = NO_LIMIT_PAGES


def _page_count(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)


def page_size(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA page_size").scalar() or 0)
