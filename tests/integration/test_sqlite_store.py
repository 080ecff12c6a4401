"""SqliteStore on real files: what the store contract cannot say about SQLite itself."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from ci_server.models import Job, JobStatus
from ci_server.store.sqlite import SqliteStore
from tests.fakes import wait_until


def connection_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]


async def test_a_store_that_fails_to_open_leaves_no_connection_behind(tmp_path: Path) -> None:
    # An aiosqlite connection left open keeps a thread that keeps the process from exiting:
    # a server given a bad file must fail, not hang.
    before = set(connection_threads())
    not_a_database = tmp_path / "ci.db"
    not_a_database.write_bytes(b"not SQLite" * 1000)

    with pytest.raises(sqlite3.DatabaseError, match="file is not a database"):
        await SqliteStore(not_a_database).open()

    # A closed connection's thread ends just after the close returns. (Only its own: one of
    # another test's, still ending when this one began, made `== before` never true.)
    await wait_until(
        lambda: not set(connection_threads()) - before, what="no connection thread left"
    )


async def test_a_job_just_added_is_found_however_busy_the_reading_connection(
    tmp_path: Path,
) -> None:
    """Reads share one connection (no read waits behind a batch of writes). Each must see
    every commit made before it started, whatever other reads are under way on it: a read
    left unfinished between its calls on the connection's thread held the database as it
    was, and a job just added was not found (JobNotFound right after a submit, seen on a
    busy worker)."""
    async with SqliteStore(tmp_path / "ci.db") as store:
        await store.add_job(Job(id="000000000000", timeout_seconds=60))
        adding = True

        async def read_all_the_time() -> None:
            while adding:
                await store.list_jobs(limit=5)
                await store.jobs_with_status(JobStatus.QUEUED)

        readers = [asyncio.create_task(read_all_the_time()) for _ in range(4)]
        try:
            for n in range(1, 300):
                job = Job(id=f"{n:012x}", timeout_seconds=60)
                await store.add_job(job)
                assert (await store.get_job(job.id)).id == job.id
        finally:
            adding = False
            await asyncio.gather(*readers)
