"""What only the PostgreSQL store has: its migrations, shared by processes that start at once,
and signals that reach other processes (LISTEN/NOTIFY).

The rest of its behaviour is the JobStore contract (tests/unit/test_store_contract.py).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from ci_server.store.postgres import MIGRATIONS, PostgresStore, redacted
from ci_server.store.signals import Signal, SignalKind
from tests.fakes import wait_until
from tests.unit.test_store_contract import add_jobs, make_event


async def test_stores_opening_a_new_database_at_once_migrate_it_once(
    postgres_database: str,
) -> None:
    """Six processes (API replicas, workers) starting together on an empty database."""
    async with contextlib.AsyncExitStack() as stack:
        stores = [PostgresStore(postgres_database) for _ in range(6)]
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
    async with PostgresStore(postgres_database) as first:
        [job] = await add_jobs(first, 1)
    async with PostgresStore(postgres_database) as reopened:
        assert await reopened.get_job(job.id) == job
        applied = await reopened.pool.fetchval("SELECT COUNT(*) FROM schema_migrations")
    assert applied == len(MIGRATIONS)


def test_messages_never_show_the_password() -> None:
    url = "postgresql://ci:s3cret@db.example.com:5432/ci"
    assert redacted(url) == "postgresql://ci:***@db.example.com:5432/ci"
    assert "s3cret" not in repr(PostgresStore(url))
    assert redacted("postgresql://ci@db/ci") == "postgresql://ci@db/ci"


async def test_signals_reach_the_listeners_of_another_process(postgres_database: str) -> None:
    """An API replica's store hears what a worker's store writes, and the other way round."""
    async with (
        PostgresStore(postgres_database) as api,
        PostgresStore(postgres_database) as worker,
    ):
        at_worker: list[Signal] = []
        at_api: list[Signal] = []
        await worker.listen(SignalKind.QUEUED, at_worker.append)
        await worker.listen(SignalKind.CANCEL, at_worker.append)
        await api.listen(SignalKind.EVENTS, at_api.append)

        [job] = await add_jobs(api, 1)
        await worker.claim_next_job("w")
        await worker.append_events([make_event(job.id, n) for n in (1, 2, 3)])
        await api.request_cancel(job.id)

        await wait_until(
            lambda: len(at_worker) == 2 and len(at_api) == 1, what="signals", within=10
        )
        assert at_worker == [Signal(SignalKind.QUEUED, job.id), Signal(SignalKind.CANCEL, job.id)]
        assert at_api == [Signal(SignalKind.EVENTS, job.id, 3)]


async def test_listening_resumes_after_the_connection_is_lost(postgres_database: str) -> None:
    async with PostgresStore(postgres_database) as store:
        heard: list[Signal] = []
        await store.listen(SignalKind.QUEUED, heard.append)
        # The server ends every other session: the listening connection is cut.
        await store.pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

        async def heard_one() -> bool:
            [job] = await add_jobs(store, 1)
            await asyncio.sleep(0.2)
            return Signal(SignalKind.QUEUED, job.id) in heard

        await wait_until(heard_one, what="a signal after reconnecting", within=20)


async def test_without_listen_a_store_hears_only_its_own_writes(postgres_database: str) -> None:
    """Through a pooler that cannot LISTEN (CI_DATABASE_LISTEN=false): this process's own
    writes still wake its listeners; another process's are found by polling."""
    async with (
        PostgresStore(postgres_database, listen=False) as deaf,
        PostgresStore(postgres_database) as other,
    ):
        heard: list[Signal] = []
        await deaf.listen(SignalKind.QUEUED, heard.append)
        [own] = await add_jobs(deaf, 1)
        assert heard == [Signal(SignalKind.QUEUED, own.id)]
        await add_jobs(other, 1)
        await other.ping()
        await deaf.ping()
        assert heard == [Signal(SignalKind.QUEUED, own.id)]
        connections = await deaf.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'LISTEN%'"
        )
        assert connections == 0
