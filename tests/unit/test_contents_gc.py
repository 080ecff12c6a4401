"""Cleaning up contents (ci_server/contents_gc.py): what recent submits and waiting jobs need
is kept, per owner; the rest goes once past its grace. The file blob store (ages set on its
files), the in-memory store."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from io import BytesIO
from pathlib import Path

import pytest
import zstandard

from ci_common.trees import TreeEntry, content_hash, encode_tree, record_header
from ci_server.contents import (
    SWEPT_KEY,
    Contents,
    ManifestFile,
    content_key,
    encode_manifest,
    ref_key,
)
from ci_server.contents_gc import UPLOAD_GRACE, sweep_contents
from ci_server.models import Job
from ci_server.runner.workspace import ArchiveLimits
from ci_server.store.blobs_fs import FileBlobStore
from ci_server.store.memory import MemoryStore

KEEP_FOR = timedelta(hours=24)
LONG_AGO = time.time() - 2 * KEEP_FOR.total_seconds()


@pytest.fixture
async def blobs(tmp_path: Path) -> AsyncIterator[FileBlobStore]:
    blobs = FileBlobStore(tmp_path / "blobs")
    await blobs.open()
    yield blobs
    await blobs.close()


@pytest.fixture
def contents(blobs: FileBlobStore, tmp_path: Path) -> Contents:
    return Contents(blobs, ArchiveLimits(), tmp_path)


async def send(contents: Contents, owner: str, *datas: bytes) -> list[str]:
    records = b"".join(record_header(content_hash(d), len(d)) + d for d in datas)
    await contents.receive(owner, BytesIO(zstandard.ZstdCompressor().compress(records)))
    return [content_hash(d) for d in datas]


async def project(contents: Contents, owner: str, name: str, data: bytes) -> tuple[str, str]:
    """A submitted tree of one file (whose ref is fresh): (root hash, the file's hash)."""
    (file,) = await send(contents, owner, data)
    tree = encode_tree([TreeEntry(name, "file", file, len(data))])
    (root,) = await send(contents, owner, tree)
    await contents.remember(owner, root)
    return root, file


def age(blobs: FileBlobStore, *keys: str, when: float = LONG_AGO) -> None:
    for key in keys:
        os.utime(blobs.directory / key, (when, when))


async def present(blobs: FileBlobStore) -> set[str]:
    return {blob.key for blob in await blobs.list_blobs()}


async def test_what_recent_submits_and_waiting_jobs_need_is_kept_and_the_rest_goes(
    blobs: FileBlobStore, contents: Contents, tmp_path: Path
) -> None:
    store = MemoryStore()
    recent_root, recent_file = await project(contents, "ann", "kept.py", b"kept")
    old_root, old_file = await project(contents, "ann", "old.py", b"old")
    (waiting_file,) = await send(contents, "ann", b"a waiting job's")
    (fresh_file,) = await send(contents, "ann", b"just sent, not yet submitted")
    job = Job(id="a1b2c3d4e5f6", timeout_seconds=60, owner_id="ann")
    await store.add_job(job)
    manifest = tmp_path / "manifest"
    manifest.write_bytes(encode_manifest([ManifestFile("w.py", 15, False, waiting_file)]))
    await blobs.put(job.id, manifest)
    ann = [content_key("ann", h) for h in (recent_root, recent_file, old_root, old_file)]
    age(blobs, *ann, content_key("ann", waiting_file), ref_key("ann", old_root), job.id)

    removed = await sweep_contents(store, contents, tmp_path, KEEP_FOR)

    gone = {ref_key("ann", old_root), content_key("ann", old_root), content_key("ann", old_file)}
    assert set(removed) == gone
    assert await present(blobs) == {
        ref_key("ann", recent_root),
        content_key("ann", recent_root),
        content_key("ann", recent_file),
        content_key("ann", waiting_file),
        content_key("ann", fresh_file),
        job.id,  # uploads are the worker's to delete, never the sweep's
        SWEPT_KEY,  # when contents went: the API trusts no tree it found whole before
    }


async def test_contents_are_kept_for_their_own_owner_only(
    blobs: FileBlobStore, contents: Contents, tmp_path: Path
) -> None:
    """Bob sent the same file as Ann, but submitted nothing that needs it: his copy goes,
    though Ann's recent submit keeps hers."""
    _, file = await project(contents, "ann", "same.py", b"the same bytes")
    await send(contents, "bob", b"the same bytes")
    age(blobs, content_key("ann", file), content_key("bob", file))

    removed = await sweep_contents(MemoryStore(), contents, tmp_path, KEEP_FOR)

    assert removed == [content_key("bob", file)]
    assert content_key("ann", file) in await present(blobs)


async def test_an_unreferenced_content_is_kept_for_its_grace_then_goes(
    blobs: FileBlobStore, contents: Contents, tmp_path: Path
) -> None:
    (file,) = await send(contents, "ann", b"uploaded, never submitted")
    assert await sweep_contents(MemoryStore(), contents, tmp_path, KEEP_FOR) == []
    assert SWEPT_KEY not in await present(blobs)  # nothing went

    age(blobs, content_key("ann", file), when=time.time() - UPLOAD_GRACE.total_seconds() - 60)

    started = time.time()
    assert await sweep_contents(MemoryStore(), contents, tmp_path, KEEP_FOR) == [
        content_key("ann", file)
    ]
    assert started <= float(await blobs.read_bytes(SWEPT_KEY, 64) or b"") <= time.time()
