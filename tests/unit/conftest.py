"""The backends the store contract suites run against: memory, SQLite and PostgreSQL.

The PostgreSQL backend uses a real server (tests/conftest.py: `postgres_database`), so it is
skipped without one, and fails under CI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ci_server.store.memory import MemoryStore
from ci_server.store.postgres import PostgresStore
from ci_server.store.repository import Store
from ci_server.store.sqlite import SqliteStore

StoreFactory = Callable[[], Store]
"""Makes a store (not yet open) on the test's one database."""


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Each call is a new store on the same data, as another process would open it (SQLite:
    the same file; PostgreSQL: the same database; memory has only the one store)."""
    if request.param == "memory":
        memory = MemoryStore()
        return lambda: memory
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "jobs.db")
    url: str = request.getfixturevalue("postgres_database")
    return lambda: PostgresStore(url)


@pytest.fixture
async def store(new_store: StoreFactory) -> AsyncIterator[Store]:
    async with new_store() as backend:
        yield backend
