"""The blob store of several hosts: blobs as rows of 1 MiB chunks in PostgreSQL.

Tables `blobs` (key, size, chunk count, when stored) and `blob_chunks` (key, n, data), made
by a migration of store/postgres.py. A put writes its rows in one transaction, so another
process sees the blob whole or not at all, and a put that fails (its source breaks, the
connection drops) is rolled back with everything it wrote. A put first upserts the key's
`blobs` row, whose lock makes another put or delete of the same key wait for it. A read is
one REPEATABLE READ transaction, a chunk per query: one snapshot, one chunk in memory.

Its own small pool: a 100 MB upload holds a connection for a second or two, which the job
store's queries must not wait behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Collection, Sequence
from pathlib import Path

import asyncpg
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from ci_server.models import BlobNotFound, StorageFailure
from ci_server.store.blobs import BlobInfo, BlobStore, BlobWriter, check_key, storage_errors
from ci_server.store.postgres import open_pool, redacted

DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # what a connection the server ended mid-query may raise
    OSError,  # the connection: refused, reset, timed out
)


class _RowWriter(BlobWriter):
    def __init__(
        self, key: str, pool: asyncpg.Pool, connection: PoolConnectionProxy[Record]
    ) -> None:
        self._what = f"could not store blob {key!r}"
        self._key = key
        self._pool = pool
        self._connection: PoolConnectionProxy[Record] | None = connection
        self._size = 0
        self._chunks = 0

    @property
    def connection(self) -> PoolConnectionProxy[Record]:
        if self._connection is None:
            raise RuntimeError("the put has ended")
        return self._connection

    async def write(self, chunk: bytes) -> None:
        with storage_errors(self._what, DATABASE_ERRORS):
            await self.connection.execute(
                "INSERT INTO blob_chunks (key, n, data) VALUES ($1, $2, $3)",
                self._key,
                self._chunks,
                chunk,
            )
        self._chunks += 1
        self._size += len(chunk)

    async def commit(self) -> None:
        with storage_errors(self._what, DATABASE_ERRORS):
            await self.connection.execute(
                "UPDATE blobs SET size = $2, chunks = $3, stored_at = clock_timestamp() "
                "WHERE key = $1",
                self._key,
                self._size,
                self._chunks,
            )
            await self.connection.execute("COMMIT")
        await self._release()

    async def abort(self) -> None:
        if self._connection is None:
            return
        with contextlib.suppress(Exception):  # a broken connection: the server rolled back
            await self._connection.execute("ROLLBACK")
        await self._release()

    async def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # A connection still in a transaction (a failed COMMIT) is rolled back by the pool.
            await self._pool.release(connection)


class PostgresBlobStore(BlobStore):
    def __init__(self, url: str, *, max_connections: int = 4) -> None:
        self.url = url
        self.max_connections = max_connections
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresBlobStore({redacted(self.url)!r})"

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the blob store is not open")
        return self._pool

    async def open(self) -> None:
        self._pool = await open_pool(self.url, min_size=1, max_size=self.max_connections)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _writer(self, key: str) -> BlobWriter:
        with storage_errors(f"could not store blob {key!r}", DATABASE_ERRORS):
            connection = await self.pool.acquire()
            try:
                # Plain statements, not a Transaction object: abort() can roll back
                # whatever state a failed write or COMMIT left.
                await connection.execute("BEGIN")
                # Locks the key's row until COMMIT; readers still see the old blob, if any.
                await connection.execute(
                    "INSERT INTO blobs (key, size, chunks, stored_at) "
                    "VALUES ($1, 0, 0, clock_timestamp()) "
                    "ON CONFLICT (key) DO UPDATE SET size = 0, chunks = 0",
                    key,
                )
                await connection.execute("DELETE FROM blob_chunks WHERE key = $1", key)
            except BaseException:
                await self.pool.release(connection)
                raise
        return _RowWriter(key, self.pool, connection)

    async def read(self, key: str) -> AsyncGenerator[bytes, None]:
        check_key(key)
        what = f"could not read blob {key!r}"
        with storage_errors(what, DATABASE_ERRORS):
            connection = await self.pool.acquire()
            try:
                async with connection.transaction(isolation="repeatable_read", readonly=True):
                    blob = await connection.fetchrow(
                        "SELECT size, chunks FROM blobs WHERE key = $1", key
                    )
                    if blob is None:
                        raise BlobNotFound(key)
                    size = 0
                    for n in range(blob["chunks"]):
                        chunk = await connection.fetchval(
                            "SELECT data FROM blob_chunks WHERE key = $1 AND n = $2", key, n
                        )
                        if chunk is None:
                            raise StorageFailure(f"{what}: its chunk {n} is missing")
                        size += len(chunk)
                        yield chunk
                    if size != blob["size"]:
                        raise StorageFailure(f"{what}: {size} bytes, {blob['size']} stored")
            finally:
                await self.pool.release(connection)

    async def put_many(self, blobs: Sequence[tuple[str, bytes]]) -> None:
        """One transaction for the whole batch (a few statements, not six per blob)."""
        blobs = list(dict(blobs).items())  # a key twice: its last bytes, as two puts
        keys = [check_key(key) for key, _ in blobs]
        chunks = [
            (key, n, data[offset : offset + self.chunk_bytes])
            for key, (_, data) in zip(keys, blobs, strict=True)
            for n, offset in enumerate(range(0, len(data), self.chunk_bytes))
        ]
        rows = [
            (key, len(data), -(-len(data) // self.chunk_bytes))
            for key, (_, data) in zip(keys, blobs, strict=True)
        ]
        with storage_errors("could not store blobs", DATABASE_ERRORS):
            async with self.pool.acquire() as connection, connection.transaction():
                await connection.executemany(
                    "INSERT INTO blobs (key, size, chunks, stored_at) "
                    "VALUES ($1, $2, $3, clock_timestamp()) ON CONFLICT (key) DO UPDATE "
                    "SET size = $2, chunks = $3, stored_at = clock_timestamp()",
                    rows,
                )
                await connection.execute("DELETE FROM blob_chunks WHERE key = ANY($1)", keys)
                await connection.copy_records_to_table(
                    "blob_chunks", records=chunks, columns=["key", "n", "data"]
                )

    async def fetch_many(self, blobs: Sequence[tuple[str, Path]]) -> int:
        """Blobs of one chunk (a project's files, mostly) in a query per 500; the others
        as `fetch`."""
        keys = [check_key(key) for key, _ in blobs]
        total = 0
        for start in range(0, len(blobs), 500):
            batch = list(zip(keys[start : start + 500], blobs[start : start + 500], strict=True))
            with storage_errors("could not read blobs", DATABASE_ERRORS):
                rows = await self.pool.fetch(
                    "SELECT b.key, c.data FROM blobs b LEFT JOIN blob_chunks c "
                    "ON c.key = b.key AND c.n = 0 AND b.chunks = 1 WHERE b.key = ANY($1)",
                    [key for key, _ in batch],
                )
            single = {row["key"]: row["data"] for row in rows}
            for key, (_, destination) in batch:
                if key not in single:
                    raise BlobNotFound(key)
                data = single[key]
                if data is None:  # empty, or more than one chunk
                    total += await self.fetch(key, destination)
                else:
                    with storage_errors(f"could not write blob {key!r} to {destination}"):
                        await asyncio.to_thread(destination.write_bytes, data)
                    total += len(data)
        return total

    async def sizes(self, keys: Collection[str]) -> dict[str, int]:
        with storage_errors("could not look for blobs", DATABASE_ERRORS):
            rows = await self.pool.fetch(
                "SELECT key, size FROM blobs WHERE key = ANY($1)", [check_key(k) for k in keys]
            )
        return {row["key"]: row["size"] for row in rows}

    async def exists(self, key: str) -> bool:
        with storage_errors(f"could not look for blob {key!r}", DATABASE_ERRORS):
            return await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM blobs WHERE key = $1)", check_key(key)
            )

    async def delete(self, key: str) -> None:
        with storage_errors(f"could not delete blob {key!r}", DATABASE_ERRORS):
            await self.pool.execute("DELETE FROM blobs WHERE key = $1", check_key(key))

    async def list_blobs(self) -> list[BlobInfo]:
        with storage_errors("could not list the blobs", DATABASE_ERRORS):
            rows = await self.pool.fetch("SELECT key, size, stored_at FROM blobs ORDER BY key")
        return [BlobInfo(row["key"], row["size"], row["stored_at"]) for row in rows]
