"""WAL checkpoints on a connection of their own.

SQLite checkpoints a WAL automatically inside the commit that crosses its size (1000 pages):
on the store's one connection, that is one thread, which every query of the process waits on.
Under heavy output such commits took 50 to 76 ms and `/health`'s ping waited behind them. So
the store's connection never checkpoints (`wal_autocheckpoint=0`) and this one does, PASSIVE
(it never waits for a lock and never makes a writer wait), on its own aiosqlite thread,
every CHECKPOINT_SECONDS.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite

from ci_server.periodic import cancel_all, start_every

CHECKPOINT_SECONDS = 1.0


class WalCheckpointer:
    def __init__(self, path: Path, seconds: float = CHECKPOINT_SECONDS) -> None:
        self.path = path
        self.seconds = seconds
        self._db: aiosqlite.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._db = await aiosqlite.connect(self.path)
        self._task = start_every(self.seconds, self.checkpoint, "WAL checkpoint")

    async def checkpoint(self) -> None:
        """Copy what the WAL holds into the database file, as far as readers allow."""
        if self._db is not None:
            await self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None
        if self._db is not None:
            await self._db.close()
            self._db = None
