"""EventHub over a real SQLite file: what reaches the database, once, across shutdowns."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from ci_server.events import EventHub
from ci_server.models import EventType, JobEvent
from ci_server.store.sqlite import INSERT_PART_BYTES, SqliteStore
from tests.fakes import wait_until

JOB = "0123456789ab"


class SignallingStore(SqliteStore):
    """Says when a batch write has started (the write itself runs in aiosqlite's thread)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writing = asyncio.Event()

    async def append_events(self, events: Sequence[JobEvent]) -> None:
        self.writing.set()
        await super().append_events(events)


async def test_shutdown_during_a_batch_write_stores_every_event_once(tmp_path: Path) -> None:
    path = tmp_path / "ci.db"
    async with SignallingStore(path) as store, EventHub(store, flush_interval=0.01) as hub:
        channel = hub.open(JOB)
        published = [
            channel.publish(EventType.LOG, stream="stdout", text=f"line {n}") for n in range(5000)
        ]
        async with asyncio.timeout(10):
            await store.writing.wait()
        # Leaving the hub now cancels the flusher while its write is in flight.
    async with SqliteStore(path) as reopened:
        assert await reopened.events_after(JOB) == published


async def test_events_of_a_finished_job_replay_from_the_file_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ci.db"
    async with SqliteStore(path) as store, EventHub(store) as hub:
        channel = hub.open(JOB)
        published = [
            channel.publish(EventType.STATUS, status="running"),
            channel.publish(EventType.LOG, stream="stdout", text="ünïcode ✓"),
            channel.publish(EventType.END, status="succeeded", exit_code=0, success=True),
        ]
        await channel.close()

    async with SqliteStore(path) as store, EventHub(store) as restarted:
        async with asyncio.timeout(10):
            replayed = [event async for event in restarted.stream(JOB)]
        assert replayed == published
        assert await restarted.last_seq(JOB) == 3


async def test_a_batch_larger_than_one_insert_is_stored_whole_and_in_order(
    tmp_path: Path,
) -> None:
    """A batch goes in as several statements (INSERT_PART_BYTES each), so that other queries
    run between them; it is still committed whole."""
    line = "x" * (INSERT_PART_BYTES // 3)
    async with SqliteStore(tmp_path / "ci.db") as store, EventHub(store) as hub:
        channel = hub.open(JOB)
        published = [channel.publish(EventType.LOG, stream="stdout", text=line) for _ in range(20)]
    async with SqliteStore(tmp_path / "ci.db") as reopened:
        assert await reopened.events_after(JOB) == published


async def test_the_wal_is_copied_into_the_database_file_while_the_store_is_open(
    tmp_path: Path,
) -> None:
    """The store's connection never checkpoints (a checkpoint inside a commit held up every
    query); its WalCheckpointer does, on a connection of its own, so the WAL does not keep
    everything written while the server runs."""
    path = tmp_path / "ci.db"
    line = "x" * 65536
    async with SqliteStore(path) as store, EventHub(store) as hub:
        channel = hub.open(JOB)
        for _ in range(128):  # 8 MiB
            channel.publish(EventType.LOG, stream="stdout", text=line)
        await hub.flush()
        await wait_until(
            lambda: path.stat().st_size > 8 * 2**20,
            what="the events copied from the WAL into the database file",
            within=20,
        )
