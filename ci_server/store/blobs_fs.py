"""The blob store of one host: a file per blob in one directory (CI_DATA_DIR/blobs).

A put writes `.put-*` beside the blobs, flushes it to disk and renames it over the key's
file: the rename is atomic, so a reader (another process of the same host too) opens the
old file or the new one, never a part. Keys are single safe names (`check_key`), so no
key reaches outside the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import AsyncGenerator, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from ci_server.models import BlobNotFound
from ci_server.store.blobs import (
    CLEANUP_GRACE,
    BlobInfo,
    BlobStore,
    BlobWriter,
    check_key,
    storage_errors,
)

PARTIAL_PREFIX = ".put-"
"""How the files of puts in progress start; no key can (check_key)."""


def _stored_at(status: os.stat_result) -> datetime:
    return datetime.fromtimestamp(status.st_mtime, UTC)


def _sync_file_system(directory: Path) -> None:
    """Flush every file written on `directory`'s file system: Linux's syncfs(2), one call
    for thousands of files that an fsync each took 4 ms apiece for; elsewhere sync(2)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None or syncfs(descriptor) != 0:
            os.sync()
    finally:
        os.close(descriptor)


class _FileWriter(BlobWriter):
    def __init__(self, key: str, path: Path, partial: Path, file: BinaryIO) -> None:
        self._what = f"could not store blob {key!r}"
        self._path = path
        self._partial = partial
        self._file = file

    async def write(self, chunk: bytes) -> None:
        with storage_errors(self._what):
            await asyncio.to_thread(self._file.write, chunk)

    async def commit(self) -> None:
        with storage_errors(self._what):
            await asyncio.to_thread(self._finish)

    def _finish(self) -> None:
        # On disk before the rename: after a crash the key holds the old blob or the new.
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._partial.replace(self._path)

    async def abort(self) -> None:
        await asyncio.to_thread(self._discard)

    def _discard(self) -> None:
        with contextlib.suppress(OSError):  # the disk that failed may fail the close too
            self._file.close()
        self._partial.unlink(missing_ok=True)


class FileBlobStore(BlobStore):
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.directory)!r})"

    def _path(self, key: str) -> Path:
        return self.directory / check_key(key)

    async def open(self) -> None:
        with storage_errors(f"could not create the blob directory {self.directory}"):
            await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        pass

    async def _writer(self, key: str) -> BlobWriter:
        with storage_errors(f"could not store blob {key!r}"):
            descriptor, name = await asyncio.to_thread(
                tempfile.mkstemp, prefix=PARTIAL_PREFIX, dir=self.directory
            )
        return _FileWriter(key, self._path(key), Path(name), os.fdopen(descriptor, "wb"))

    async def read(self, key: str) -> AsyncGenerator[bytes, None]:
        path = self._path(key)
        what = f"could not read blob {key!r}"
        with storage_errors(what):
            try:
                file = await asyncio.to_thread(path.open, "rb")
            except FileNotFoundError:
                raise BlobNotFound(key) from None
        # The open file is the blob as it was: a put renames another file over its name,
        # a delete unlinks the name; neither changes what this reads.
        try:
            while True:
                with storage_errors(what):
                    chunk = await asyncio.to_thread(file.read, self.chunk_bytes)
                if not chunk:
                    return
                yield chunk
        finally:
            await asyncio.to_thread(file.close)

    async def put_many(self, blobs: Sequence[tuple[str, bytes]]) -> None:
        """Every blob written beside its key, all flushed at once (`_sync_file_system`),
        then each renamed over its key."""
        with storage_errors("could not store blobs"):
            await asyncio.to_thread(self._put_many, [(self._path(k), d) for k, d in blobs])

    def _put_many(self, blobs: list[tuple[Path, bytes]]) -> None:
        written: list[tuple[Path, Path]] = []
        try:
            for path, data in blobs:
                descriptor, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=self.directory)
                written.append((Path(name), path))
                with os.fdopen(descriptor, "wb") as file:
                    file.write(data)
            _sync_file_system(self.directory)
            while written:
                partial, path = written.pop()
                partial.replace(path)
        finally:
            for partial, _ in written:
                partial.unlink(missing_ok=True)

    async def fetch_many(self, blobs: Sequence[tuple[str, Path]]) -> int:
        """Copies in one thread (each file whole or not at all, as `fetch`)."""
        pairs = [(self._path(key), key, destination) for key, destination in blobs]
        return await asyncio.to_thread(self._fetch_many, pairs)

    def _fetch_many(self, pairs: list[tuple[Path, str, Path]]) -> int:
        total = 0
        for source, key, destination in pairs:
            partial = destination.with_name(f".{destination.name}.part")
            try:
                with storage_errors(f"could not read blob {key!r}"):
                    try:
                        reader = source.open("rb")
                    except FileNotFoundError:
                        raise BlobNotFound(key) from None
                with reader, storage_errors(f"could not write blob {key!r} to {destination}"):
                    with partial.open("wb") as writer:
                        shutil.copyfileobj(reader, writer, self.chunk_bytes)
                        total += writer.tell()
                    partial.replace(destination)
            finally:
                partial.unlink(missing_ok=True)
        return total

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def sizes(self, keys: Collection[str]) -> dict[str, int]:
        with storage_errors("could not look for blobs"):
            return await asyncio.to_thread(self._sizes, list(keys))

    def _sizes(self, keys: list[str]) -> dict[str, int]:
        """In a thread: a manifest asks about 20,000 keys (as strings: Path objects for each
        took 0.17 s)."""
        folder = f"{self.directory}{os.sep}"
        found = {}
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                found[key] = os.stat(folder + check_key(key)).st_size  # noqa: PTH116 (see above)
        return found

    async def delete(self, key: str) -> None:
        path = self._path(key)
        with storage_errors(f"could not delete blob {key!r}"):
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def list_blobs(self) -> list[BlobInfo]:
        with storage_errors(f"could not list the blobs in {self.directory}"):
            return await asyncio.to_thread(self._list)

    def _list(self) -> list[BlobInfo]:
        blobs = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(PARTIAL_PREFIX):
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    status = entry.stat()
                    blobs.append(BlobInfo(entry.name, status.st_size, _stored_at(status)))
        return sorted(blobs, key=lambda blob: blob.key)

    async def delete_except(
        self,
        keep: Collection[str],
        *,
        older_than: timedelta = CLEANUP_GRACE,
        among: Callable[[str], bool] = lambda _key: True,
    ) -> list[str]:
        """As BlobStore's, and removes the partial files of puts that stopped (a crash)
        more than `older_than` ago."""
        await asyncio.to_thread(self._remove_partials, datetime.now(UTC) - older_than)
        return await super().delete_except(keep, older_than=older_than, among=among)

    def _remove_partials(self, before: datetime) -> None:
        for partial in self.directory.glob(f"{PARTIAL_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if _stored_at(partial.stat()) < before:
                    partial.unlink()
