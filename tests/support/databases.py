"""The store's two backends as fixtures: each test that takes `database`, `store` or
`on_each_database` runs on SQLite and again on PostgreSQL (a throwaway server from
tests/support/postgres.py, so that run is an integration test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from factory_mas.settings import Settings
from factory_mas.store import Store, sqlite_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of each backend in turn."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "factory.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    async with Store(database) as s:
        yield s


@pytest.fixture
def on_each_database(settings: Settings, database: str) -> Settings:
    """`settings` with the store in each database in turn. A module whose app-level tests
    must hold on both backends imports it as its `settings`."""
    replace = msgspec.structs.replace
    return replace(settings, data=replace(settings.data, database_url=database))
