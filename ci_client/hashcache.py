"""The client's cache of file hashes, so that an unchanged file is not read again.

A file's hash is kept under its absolute path with the size and modification time (ns) it
had when hashed; a file whose size or time differs is hashed again. SQLite at
`$XDG_CACHE_HOME/ci/hashes.sqlite3` (by default `~/.cache/ci/`), or CI_CACHE_DIR. A file
modified within RACY_SECONDS of its hashing is not cached: a second change in the same
tick of the file system's clock would keep its time (git's "racy clean" problem).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

RACY_SECONDS = 2.0
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS hashes ("
    "path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL)"
)


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("CI_CACHE_DIR"):
        return Path(env["CI_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ci"


class HashCache:
    """The hashes known for the files under one folder, read at once, written back at once."""

    def __init__(self, database: Path, folder: Path) -> None:
        self.database = database
        self.prefix = f"{folder.resolve()}{os.sep}"
        self._known: dict[str, tuple[str, int, int, str]] = {}
        """The rows read (path, size, mtime_ns, hash), by path."""
        self._new: list[tuple[str, int, int, str]] = []
        self.hits = 0

    def __enter__(self) -> HashCache:
        # No cache (unreadable, damaged): every file is hashed.
        with contextlib.suppress(sqlite3.Error, OSError), self._connection() as connection:
            rows = connection.execute(
                "SELECT path, size, mtime_ns, hash FROM hashes WHERE path >= ? AND path < ?",
                (self.prefix, self.prefix[:-1] + chr(ord(os.sep) + 1)),
            )
            self._known = {row[0]: row for row in rows}
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._new:
            return
        with contextlib.suppress(sqlite3.Error, OSError), self._connection() as connection:
            connection.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)", self._new)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        self.database.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.database, timeout=10)
        try:
            with connection:
                connection.execute(SCHEMA)
                yield connection
        finally:
            connection.close()

    def get(self, path: str, status: os.stat_result) -> str | None:
        known = self._known.get(path)
        if known is not None and known[1] == status.st_size and known[2] == status.st_mtime_ns:
            self.hits += 1
            return known[3]
        return None

    def put(self, path: str, status: os.stat_result, hash_: str) -> None:
        if time.time_ns() - status.st_mtime_ns < RACY_SECONDS * 1e9:
            return
        self._new.append((path, status.st_size, status.st_mtime_ns, hash_))
