"""Uploads every worker can read: the abstract BlobStore, its keys and its chunking.

A blob is a file kept under a key until it is deleted: the project an API process received,
read by the worker (maybe on another host) that runs its job. Backends: a directory on one
host (blobs_fs.py) and PostgreSQL for several hosts (blobs_postgres.py); open_blob_store in
factory.py picks one from the settings. Every backend passes
tests/unit/test_blob_store_contract.py.

Blobs stream through in chunks of at most `chunk_bytes` (1 MiB): a 100 MB upload never
sits in memory. A put is atomic: readers see the blob whole or not at all, and a put that
fails (its source breaks, the disk fills) leaves what the key held before.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from ci_server.lifecycle import Lifecycle
from ci_server.models import InvalidBlobKey, StorageFailure

CHUNK_BYTES = 1024 * 1024

CLEANUP_GRACE = timedelta(minutes=1)
"""How old a blob must be before `delete_except` may remove it: a blob just stored may
belong to a job its API process is about to insert, which the caller's list of jobs to
keep could not know yet."""

BlobSource = Path | BinaryIO | AsyncIterable[bytes]
"""What a put reads: a local file, an open binary file (read in a thread: a spooled upload),
or an async stream of bytes (a request's body), in pieces of any size."""

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_key(key: str) -> str:
    """`key` if a store may keep a blob under it; InvalidBlobKey otherwise.

    One path component of safe characters: no `/`, `\\`, NUL, `..` or absolute path can
    get through, nor a name starting with `.` (where the file store writes its partial
    blobs).
    """
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise InvalidBlobKey(key)
    return key


def artifact_key(job_id: str, position: int) -> str:
    """The key of a job's artifact at `position` (store: Artifact.position). It holds a
    `.`: not an upload's key (contents.is_upload_key), so the clean-up of uploads leaves it."""
    return f"{job_id}.artifact.{position}"


_ARTIFACT_KEY = re.compile(r"([0-9a-f]{12})\.artifact\.([0-9]{1,9})")


def parse_artifact_key(key: str) -> tuple[str, int] | None:
    """The job id and position of an `artifact_key`; None for any other key."""
    match = _ARTIFACT_KEY.fullmatch(key)
    return (match[1], int(match[2])) if match else None


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int
    stored_at: datetime
    """When its put completed (UTC)."""


@contextlib.contextmanager
def storage_errors(
    what: str, errors: tuple[type[BaseException], ...] = (OSError,)
) -> Iterator[None]:
    """Turn `errors` raised inside into StorageFailure("what: why")."""
    try:
        yield
    except errors as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or repr(e)
        raise StorageFailure(f"{what}: {why}") from e


async def _file_chunks(file: BinaryIO, chunk_bytes: int) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(file.read, chunk_bytes):
        yield chunk


async def _rechunked(pieces: AsyncIterable[bytes], chunk_bytes: int) -> AsyncIterator[bytes]:
    """The bytes of `pieces` in chunks of exactly `chunk_bytes`, but the last."""
    pending = bytearray()
    async for piece in pieces:
        pending += piece
        while len(pending) >= chunk_bytes:
            yield bytes(pending[:chunk_bytes])
            del pending[:chunk_bytes]
    if pending:
        yield bytes(pending)


async def chunks_of(source: BlobSource, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """The bytes of `source` in chunks of at most `chunk_bytes`; files are read in a thread.

    Whatever reading the source raises passes through unchanged: it is the source's
    failure, not the store's.
    """
    if isinstance(source, Path):
        file = await asyncio.to_thread(source.open, "rb")
        try:
            async for chunk in _file_chunks(file, chunk_bytes):
                yield chunk
        finally:
            await asyncio.to_thread(file.close)
    elif isinstance(source, AsyncIterable):
        async for chunk in _rechunked(source, chunk_bytes):
            yield chunk
    else:
        async for chunk in _file_chunks(source, chunk_bytes):
            yield chunk


async def _one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


class BlobWriter(abc.ABC):
    """One put in progress: a backend's; the chunks are written in order, then committed
    (the blob appears whole) or aborted (nothing of it remains)."""

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None:
        """Write the next chunk; a failure of the store is StorageFailure."""

    @abc.abstractmethod
    async def commit(self) -> None:
        """Make the blob readable under its key, replacing the one there; StorageFailure."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Discard what was written; never raises."""


class BlobStore(Lifecycle):
    """Files kept under keys (`check_key`), readable by every process that opens the same
    store. Keys are the caller's: the server makes them from job ids."""

    chunk_bytes: int = CHUNK_BYTES

    @abc.abstractmethod
    async def open(self) -> None:
        """Create what the store needs (a directory, a schema) and connect."""

    async def put(self, key: str, source: BlobSource) -> int:
        """Store the bytes of `source` under `key`, replacing any blob there; return its size.

        Streams in chunks. Readers see the old blob or the new one, whole. If the store
        fails, StorageFailure (a full disk); if the source fails, its own error; either
        way nothing of this put remains.
        """
        writer = await self._writer(check_key(key))
        try:
            size = 0
            async for chunk in chunks_of(source, self.chunk_bytes):
                await writer.write(chunk)
                size += len(chunk)
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise
        return size

    @abc.abstractmethod
    async def _writer(self, key: str) -> BlobWriter:
        """Start a put under `key` (already checked); StorageFailure if it cannot start."""

    @abc.abstractmethod
    def read(self, key: str) -> AsyncGenerator[bytes, None]:
        """The blob's bytes, in chunks: an async generator, to close (contextlib.aclosing)
        when left early. It raises BlobNotFound when iterated if there is no such blob,
        StorageFailure if the store fails. A blob replaced or deleted meanwhile is read as
        it was when the reading started."""

    async def fetch(self, key: str, destination: Path) -> int:
        """Copy the blob to the file `destination` (replaced); return its size.

        The file appears whole (written beside it, then renamed), or not at all: a missing
        blob is BlobNotFound, and a failure to write it (a full disk) StorageFailure.
        """
        what = f"could not write blob {key!r} to {destination}"
        with storage_errors(what):
            descriptor, name = await asyncio.to_thread(
                tempfile.mkstemp, prefix=f".{destination.name}.", dir=destination.parent
            )
        partial = Path(name)
        try:
            # Only writing raises OSError here: read() raises CIErrors.
            with storage_errors(what):
                with os.fdopen(descriptor, "wb") as file:
                    size = 0
                    async with contextlib.aclosing(self.read(key)) as chunks:
                        async for chunk in chunks:
                            await asyncio.to_thread(file.write, chunk)
                            size += len(chunk)
                await asyncio.to_thread(partial.replace, destination)
        except BaseException:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise
        return size

    async def put_many(self, blobs: Sequence[tuple[str, bytes]]) -> None:
        """Store each `(key, bytes)` as `put` would, for many small blobs at once (the
        contents of a project's files): a backend may make them durable together, which
        for thousands of files is the difference between seconds and a minute. Atomic per
        blob, not for the whole batch."""
        for key, data in blobs:
            await self.put(key, _one_piece(data))

    async def fetch_many(self, blobs: Sequence[tuple[str, Path]]) -> int:
        """`fetch` each `(key, destination)` (a missing blob is BlobNotFound, and stops
        there); return the bytes written. A backend may do it in fewer round trips."""
        total = 0
        for key, destination in blobs:
            total += await self.fetch(key, destination)
        return total

    async def read_bytes(self, key: str, most: int) -> bytes | None:
        """The blob's bytes if it holds at most `most`, else None; BlobNotFound."""
        data = bytearray()
        async with contextlib.aclosing(self.read(key)) as chunks:
            async for chunk in chunks:
                data += chunk
                if len(data) > most:
                    return None
        return bytes(data)

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def sizes(self, keys: Collection[str]) -> dict[str, int]:
        """The size of each blob of `keys` that exists (the others are left out), in one
        look: a manifest asks about thousands."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the blob; a missing one is no error (deleting twice is fine)."""

    @abc.abstractmethod
    async def list_blobs(self) -> list[BlobInfo]:
        """Every blob, by key."""

    async def delete_except(
        self,
        keep: Collection[str],
        *,
        older_than: timedelta = CLEANUP_GRACE,
        among: Callable[[str], bool] = lambda _key: True,
    ) -> list[str]:
        """Delete every blob whose key is `among` those considered, not in `keep`, and that
        was stored more than `older_than` ago (CLEANUP_GRACE: see there); return their keys.

        For a process cleaning up after jobs that ended (or were lost): `keep` holds the
        keys of the jobs still queued or running, `among` tells a job's upload from the
        contents its owner's next jobs reuse (ci_server/contents.py).
        """
        before = datetime.now(UTC) - older_than
        doomed = [
            blob.key
            for blob in await self.list_blobs()
            if among(blob.key) and blob.key not in keep and blob.stored_at < before
        ]
        for key in doomed:
            await self.delete(key)
        return doomed
