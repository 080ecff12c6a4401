"""The BlobStore contract, run on every backend: a directory and a real PostgreSQL.

`new_blob_store()` opens another store on the same blobs, as another process would (the API
process that stored an upload, the worker that fetches it). At the end, what only one
backend can meet: a full disk (a 1 MiB tmpfs), a database connection that dies mid-put.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from ci_server.contents import is_upload_key
from ci_server.models import BlobNotFound, InvalidBlobKey, StorageFailure
from ci_server.store.blobs import CHUNK_BYTES, BlobStore, artifact_key
from ci_server.store.blobs_fs import FileBlobStore
from ci_server.store.blobs_postgres import PostgresBlobStore

MiB = 1024 * 1024

BlobStoreFactory = Callable[[], BlobStore]


@pytest.fixture(params=["fs", "postgres"])
def new_blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStoreFactory:
    if request.param == "fs":
        return lambda: FileBlobStore(tmp_path / "blobs")
    url: str = request.getfixturevalue("postgres_database")
    return lambda: PostgresBlobStore(url)


@pytest.fixture
async def blobs(new_blob_store: BlobStoreFactory) -> AsyncIterator[BlobStore]:
    store = new_blob_store()
    await store.open()
    yield store
    # Bounded: a put that never gave its connection back would make closing wait forever.
    await asyncio.wait_for(store.close(), timeout=30)


def random_file(path: Path, size: int) -> Path:
    """A file of `size` random bytes, written a MiB at a time."""
    with path.open("wb") as file:
        for offset in range(0, size, MiB):
            file.write(os.urandom(min(MiB, size - offset)))
    return path


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(MiB):
            sha.update(chunk)
    return sha.hexdigest()


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def tree(directory: Path) -> list[Path]:
    """Every file and folder under `directory`."""
    return sorted(directory.rglob("*"))


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    """`data` as a request body arrives: in small pieces of any size."""
    for offset in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[offset : offset + size]


async def read_all(store: BlobStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key)])


# -- round trips -----------------------------------------------------------------------------


async def test_a_blob_stored_by_one_process_is_fetched_whole_by_another(
    blobs: BlobStore, new_blob_store: BlobStoreFactory, tmp_path: Path
) -> None:
    upload = random_file(tmp_path / "upload.zip", 3 * MiB + 17)

    assert await blobs.put("job1.zip", upload) == 3 * MiB + 17

    async with new_blob_store() as worker:
        assert await worker.exists("job1.zip")
        fetched = tmp_path / "worker" / "project.zip"
        fetched.parent.mkdir()
        assert await worker.fetch("job1.zip", fetched) == 3 * MiB + 17
    assert fetched.read_bytes() == upload.read_bytes()
    assert names_in(fetched.parent) == ["project.zip"]


async def test_a_blob_is_read_from_a_file_an_open_file_or_a_stream_of_pieces(
    blobs: BlobStore, tmp_path: Path
) -> None:
    data = os.urandom(2 * MiB + 5)
    source = tmp_path / "upload.zip"
    source.write_bytes(data)

    await blobs.put("from-path", source)
    with source.open("rb") as file:
        await blobs.put("from-file", file)
    await blobs.put("from-stream", pieces(data, 65_537))

    for key in ("from-path", "from-file", "from-stream"):
        chunks = [chunk async for chunk in blobs.read(key)]
        assert b"".join(chunks) == data, key
        assert max(len(chunk) for chunk in chunks) <= CHUNK_BYTES


async def test_an_empty_blob_is_a_blob(blobs: BlobStore, tmp_path: Path) -> None:
    assert await blobs.put("empty", pieces(b"", 1)) == 0

    assert await blobs.exists("empty")
    assert await blobs.fetch("empty", tmp_path / "empty.zip") == 0
    assert (tmp_path / "empty.zip").read_bytes() == b""


async def test_100_mb_go_through_with_a_few_mib_of_memory(blobs: BlobStore, tmp_path: Path) -> None:
    upload = random_file(tmp_path / "upload.zip", 100 * MiB)
    fetched = tmp_path / "fetched.zip"

    tracemalloc.start()
    try:
        await blobs.put("big", upload)
        await blobs.fetch("big", fetched)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 16 * MiB, f"{peak / MiB:.1f} MiB at the peak"
    assert digest(fetched) == digest(upload)
    assert [(blob.key, blob.size) for blob in await blobs.list_blobs()] == [("big", 100 * MiB)]


async def test_a_put_replaces_the_blob_under_its_key(blobs: BlobStore) -> None:
    await blobs.put("job.zip", pieces(b"first upload", 5))
    await blobs.put("job.zip", pieces(b"second", 5))

    assert await read_all(blobs, "job.zip") == b"second"
    assert [(blob.key, blob.size) for blob in await blobs.list_blobs()] == [("job.zip", 6)]


async def test_concurrent_puts_of_different_keys_keep_each_its_own_bytes(
    blobs: BlobStore, new_blob_store: BlobStoreFactory
) -> None:
    uploads = {f"job{n}.zip": os.urandom(2 * MiB + n) for n in range(8)}

    async with new_blob_store() as other_process:
        await asyncio.gather(
            *(
                (blobs if n % 2 else other_process).put(key, pieces(data, 300_000))
                for n, (key, data) in enumerate(uploads.items())
            )
        )

    for key, data in uploads.items():
        assert await read_all(blobs, key) == data, key
    assert [blob.key for blob in await blobs.list_blobs()] == sorted(uploads)


async def test_a_blob_being_read_stays_whole_when_replaced_or_deleted(
    blobs: BlobStore, new_blob_store: BlobStoreFactory
) -> None:
    old = os.urandom(3 * MiB)
    await blobs.put("job.zip", pieces(old, MiB))

    async with contextlib.aclosing(blobs.read("job.zip")) as reader:
        first = await anext(reader)
        async with new_blob_store() as other_process:
            await other_process.put("job.zip", pieces(b"new", 3))
            await other_process.delete("job.zip")
        rest = [chunk async for chunk in reader]

    assert first + b"".join(rest) == old
    assert not await blobs.exists("job.zip")


# -- what is missing, refused or failed ------------------------------------------------------


async def test_a_missing_blob_is_blob_not_found_and_fetch_writes_nothing(
    blobs: BlobStore, tmp_path: Path
) -> None:
    destination = tmp_path / "project.zip"

    with pytest.raises(BlobNotFound, match=r"no blob 'never-stored\.zip' in the blob store"):
        await blobs.fetch("never-stored.zip", destination)
    with pytest.raises(BlobNotFound):
        await read_all(blobs, "never-stored.zip")
    assert not await blobs.exists("never-stored.zip")
    assert not destination.exists()
    assert names_in(tmp_path) in ([], ["blobs"])


async def test_delete_is_idempotent(blobs: BlobStore, tmp_path: Path) -> None:
    await blobs.put("job.zip", pieces(b"project", 3))

    await blobs.delete("job.zip")
    await blobs.delete("job.zip")
    await blobs.delete("never-stored.zip")

    assert not await blobs.exists("job.zip")
    assert await blobs.list_blobs() == []
    with pytest.raises(BlobNotFound):
        await blobs.fetch("job.zip", tmp_path / "project.zip")


HOSTILE_KEYS = [
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "/tmp/x",
    "a/b",
    "a\\b",
    "..",
    ".",
    "",
    ".hidden",
    "nul\x00byte",
    "new\nline",
    "x" * 201,
    "caf\u00e9",
    " leading-space",
]


async def test_hostile_keys_are_refused_by_every_operation(
    blobs: BlobStore, tmp_path: Path
) -> None:
    source = tmp_path / "source.zip"
    source.write_bytes(b"payload")
    before = tree(tmp_path)

    for key in [*HOSTILE_KEYS, str(tmp_path / "escaped")]:
        with pytest.raises(InvalidBlobKey, match="is not allowed"):
            await blobs.put(key, source)
        with pytest.raises(InvalidBlobKey):
            await blobs.fetch(key, tmp_path / "fetched.zip")
        with pytest.raises(InvalidBlobKey):
            await read_all(blobs, key)
        with pytest.raises(InvalidBlobKey):
            await blobs.exists(key)
        with pytest.raises(InvalidBlobKey):
            await blobs.delete(key)

    assert tree(tmp_path) == before
    assert await blobs.list_blobs() == []


async def failing_source(data: bytes, error: BaseException) -> AsyncIterator[bytes]:
    """A client that goes away after sending `data`."""
    yield data
    raise error


async def test_a_put_whose_source_fails_leaves_nothing_under_its_key(
    blobs: BlobStore, new_blob_store: BlobStoreFactory, tmp_path: Path
) -> None:
    client_gone = ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError, match="the client went away"):
        await blobs.put("job.zip", failing_source(os.urandom(3 * MiB), client_gone))

    async with new_blob_store() as other_process:
        assert not await other_process.exists("job.zip")
        assert await other_process.list_blobs() == []
        with pytest.raises(BlobNotFound):
            await other_process.fetch("job.zip", tmp_path / "project.zip")
    if isinstance(blobs, FileBlobStore):
        assert names_in(blobs.directory) == []  # no partial file left


async def test_a_failed_replacement_keeps_the_blob_that_was_there(blobs: BlobStore) -> None:
    await blobs.put("job.zip", pieces(b"the upload", 4))

    with pytest.raises(ConnectionResetError):
        await blobs.put("job.zip", failing_source(os.urandom(2 * MiB), ConnectionResetError()))

    assert await read_all(blobs, "job.zip") == b"the upload"


async def test_a_cancelled_put_leaves_nothing_and_frees_its_key(blobs: BlobStore) -> None:
    """A server shutting down (or a client's request cancelled) mid-upload."""
    first_chunk_sent = asyncio.Event()

    async def stalled_client() -> AsyncIterator[bytes]:
        yield os.urandom(CHUNK_BYTES)
        first_chunk_sent.set()
        await asyncio.Event().wait()  # never sends the rest
        yield b""

    put = asyncio.create_task(blobs.put("job.zip", stalled_client()))
    await asyncio.wait_for(first_chunk_sent.wait(), timeout=30)
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put

    assert not await blobs.exists("job.zip")
    assert await blobs.list_blobs() == []
    if isinstance(blobs, FileBlobStore):
        assert names_in(blobs.directory) == []  # no partial file left
    await asyncio.wait_for(blobs.put("job.zip", pieces(b"sent again", 4)), timeout=30)
    assert await read_all(blobs, "job.zip") == b"sent again"


async def test_a_put_in_progress_is_invisible_to_other_processes(
    blobs: BlobStore, new_blob_store: BlobStoreFactory, tmp_path: Path
) -> None:
    first_chunk_sent, go_on = asyncio.Event(), asyncio.Event()

    async def slow_client() -> AsyncIterator[bytes]:
        yield os.urandom(CHUNK_BYTES + 1)  # one full chunk is written at once
        first_chunk_sent.set()
        await go_on.wait()
        yield b"the rest"

    put = asyncio.create_task(blobs.put("job.zip", slow_client()))
    async with new_blob_store() as other_process:
        try:
            await asyncio.wait_for(first_chunk_sent.wait(), timeout=30)
            assert not await other_process.exists("job.zip")
            assert await other_process.list_blobs() == []
            with pytest.raises(BlobNotFound):
                await other_process.fetch("job.zip", tmp_path / "project.zip")
        finally:
            go_on.set()  # a failed check must not leave the put (and its connection) waiting

        assert await put == CHUNK_BYTES + 1 + len(b"the rest")
        assert await other_process.exists("job.zip")


# -- cleanup ---------------------------------------------------------------------------------


async def test_list_blobs_says_each_blobs_size_and_when_it_was_stored(blobs: BlobStore) -> None:
    started = datetime.now(UTC)
    await blobs.put("b.zip", pieces(b"bb", 1))
    await blobs.put("a.zip", pieces(b"a", 1))
    ended = datetime.now(UTC)

    listed = await blobs.list_blobs()

    assert [(blob.key, blob.size) for blob in listed] == [("a.zip", 1), ("b.zip", 2)]
    slack = timedelta(seconds=1)  # the file system's and the database's clocks
    assert all(started - slack <= blob.stored_at <= ended + slack for blob in listed)


async def test_delete_except_removes_the_blobs_of_ended_jobs_but_not_fresh_ones(
    blobs: BlobStore,
) -> None:
    for key in ("ended.zip", "running.zip", "queued.zip"):
        await blobs.put(key, pieces(key.encode(), 4))
    keep = {"running.zip", "queued.zip"}

    assert await blobs.delete_except(keep) == []  # all younger than the grace period
    assert await blobs.delete_except(keep, older_than=timedelta(0)) == ["ended.zip"]

    assert [blob.key for blob in await blobs.list_blobs()] == ["queued.zip", "running.zip"]


async def test_delete_except_considers_only_the_keys_among_those_asked(blobs: BlobStore) -> None:
    for key in ("ended.zip", "c.owner.content"):
        await blobs.put(key, pieces(key.encode(), 4))

    removed = await blobs.delete_except(
        set(), older_than=timedelta(0), among=lambda key: "." not in key.removesuffix(".zip")
    )

    assert removed == ["ended.zip"]
    assert [blob.key for blob in await blobs.list_blobs()] == ["c.owner.content"]


# -- many blobs at once (a project's contents) ----------------------------------------------


async def test_put_many_stores_each_blob_as_put_would(
    new_blob_store: BlobStoreFactory, blobs: BlobStore, tmp_path: Path
) -> None:
    large = os.urandom(CHUNK_BYTES * 2 + 5)
    await blobs.put("replaced", pieces(b"old", 2))
    batch = [("small", b"tiny"), ("empty", b""), ("large", large), ("replaced", b"new")]

    await blobs.put_many(batch)

    other = new_blob_store()
    await other.open()
    try:
        for key, data in batch:
            assert await other.read_bytes(key, len(data)) == data
        assert await other.sizes(["small", "empty", "large", "replaced", "absent"]) == {
            "small": 4,
            "empty": 0,
            "large": len(large),
            "replaced": 3,
        }
    finally:
        await other.close()


async def test_read_bytes_gives_up_past_its_bound(blobs: BlobStore) -> None:
    await blobs.put("eleven", pieces(b"x" * 11, 3))

    assert await blobs.read_bytes("eleven", 11) == b"x" * 11
    assert await blobs.read_bytes("eleven", 10) is None
    with pytest.raises(BlobNotFound):
        await blobs.read_bytes("absent", 10)


async def test_fetch_many_writes_every_blob_whole(blobs: BlobStore, tmp_path: Path) -> None:
    large = os.urandom(CHUNK_BYTES + 1)
    await blobs.put_many([("one", b"1"), ("empty", b""), ("large", large)])
    out = tmp_path / "out"
    out.mkdir()
    wanted = [("one", out / "a"), ("empty", out / "b"), ("large", out / "c"), ("one", out / "d")]

    assert await blobs.fetch_many(wanted) == 2 + len(large)

    assert [(out / name).read_bytes() for name in "abcd"] == [b"1", b"", large, b"1"]
    with pytest.raises(BlobNotFound):
        await blobs.fetch_many([("one", out / "e"), ("absent", out / "f")])
    assert not (out / "f").exists()
    assert names_in(out) == ["a", "b", "c", "d", "e"]


async def test_delete_except_among_uploads_leaves_the_artifacts_of_ended_jobs(
    blobs: BlobStore,
) -> None:
    ended, running = "0123456789ab", "ba9876543210"
    for key in (ended, running, artifact_key(ended, 0), artifact_key(ended, 1)):
        await blobs.put(key, pieces(key.encode(), 4))

    deleted = await blobs.delete_except({running}, older_than=timedelta(0), among=is_upload_key)

    assert deleted == [ended]
    assert sorted(blob.key for blob in await blobs.list_blobs()) == sorted(
        [running, artifact_key(ended, 0), artifact_key(ended, 1)]
    )


# -- one backend's failures ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A file system of 1 MiB (a tmpfs; mounting one needs root, as CI has)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        why = f"cannot mount a small tmpfs: {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI is set: the disk-full tests must run)", pytrace=False)
        pytest.skip(why)
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


async def test_a_full_disk_is_a_storage_failure_and_keeps_the_old_blob(small_disk: Path) -> None:
    async with FileBlobStore(small_disk / "blobs") as store:
        await store.put("job.zip", pieces(b"the upload", 4))

        with pytest.raises(StorageFailure, match=r"could not store blob 'job\.zip': No space left"):
            await store.put("job.zip", pieces(os.urandom(3 * MiB), MiB))

        assert await read_all(store, "job.zip") == b"the upload"
        assert names_in(store.directory) == ["job.zip"]


async def test_fetching_onto_a_full_disk_is_a_storage_failure_and_writes_nothing(
    blobs: BlobStore, small_disk: Path
) -> None:
    await blobs.put("job.zip", pieces(os.urandom(3 * MiB), MiB))

    no_space = r"could not write blob 'job\.zip' to .*: No space left"
    with pytest.raises(StorageFailure, match=no_space):
        await blobs.fetch("job.zip", small_disk / "project.zip")

    assert names_in(small_disk) == []


async def test_a_database_connection_lost_mid_put_is_a_storage_failure_and_stores_nothing(
    postgres_database: str,
) -> None:
    async def terminate_every_other_connection() -> None:
        admin = await asyncpg.connect(postgres_database)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()

    async def source_while_the_database_restarts() -> AsyncIterator[bytes]:
        yield os.urandom(CHUNK_BYTES)
        await terminate_every_other_connection()
        yield os.urandom(CHUNK_BYTES)

    async with PostgresBlobStore(postgres_database) as store:
        with pytest.raises(StorageFailure, match=r"could not store blob 'job\.zip'"):
            await store.put("job.zip", source_while_the_database_restarts())

        assert not await store.exists("job.zip")
        await store.put("job.zip", pieces(b"sent again", 4))  # the store carries on
        assert await read_all(store, "job.zip") == b"sent again"
