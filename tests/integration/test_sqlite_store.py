"""SqliteStore on real files: what the store contract cannot say about SQLite itself."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from ci_server.store.sqlite import SqliteStore
from tests.fakes import wait_until


def connection_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]


async def test_a_store_that_fails_to_open_leaves_no_connection_behind(tmp_path: Path) -> None:
    # An aiosqlite connection left open keeps a thread that keeps the process from exiting:
    # a server given a bad file must fail, not hang.
    before = connection_threads()
    not_a_database = tmp_path / "ci.db"
    not_a_database.write_bytes(b"not SQLite" * 1000)

    with pytest.raises(sqlite3.DatabaseError, match="file is not a database"):
        await SqliteStore(not_a_database).open()

    # A closed connection's thread ends just after the close returns.
    await wait_until(lambda: connection_threads() == before, what="no connection thread left")
