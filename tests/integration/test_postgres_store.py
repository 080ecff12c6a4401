"""What only the PostgreSQL store has: its migrations, shared by processes that start at once.

The rest of its behaviour is the JobStore contract (tests/unit/test_store_contract.py).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from ci_server.store.postgres import MIGRATIONS, PostgresJobStore, redacted
from tests.unit.test_store_contract import add_jobs


async def test_stores_opening_a_new_database_at_once_migrate_it_once(
    postgres_database: str,
) -> None:
    """Six processes (API replicas, workers) starting together on an empty database."""
    async with contextlib.AsyncExitStack() as stack:
        stores = [PostgresJobStore(postgres_database) for _ in range(6)]
        await asyncio.gather(*(stack.enter_async_context(store) for store in stores))
        jobs = await add_jobs(stores[0], 3)
        for store in stores:
            assert [job.id for job in await store.list_jobs()] == [j.id for j in reversed(jobs)]

    connection = await asyncpg.connect(postgres_database)
    try:
        versions = await connection.fetch("SELECT version FROM schema_migrations ORDER BY 1")
    finally:
        await connection.close()
    assert [row["version"] for row in versions] == list(range(1, len(MIGRATIONS) + 1))


async def test_reopening_applies_no_migration_again(postgres_database: str) -> None:
    async with PostgresJobStore(postgres_database) as first:
        [job] = await add_jobs(first, 1)
    async with PostgresJobStore(postgres_database) as reopened:
        assert await reopened.get_job(job.id) == job
        applied = await reopened.pool.fetchval("SELECT COUNT(*) FROM schema_migrations")
    assert applied == len(MIGRATIONS)


def test_messages_never_show_the_password() -> None:
    url = "postgresql://ci:s3cret@db.example.com:5432/ci"
    assert redacted(url) == "postgresql://ci:***@db.example.com:5432/ci"
    assert "s3cret" not in repr(PostgresJobStore(url))
    assert redacted("postgresql://ci@db/ci") == "postgresql://ci@db/ci"
