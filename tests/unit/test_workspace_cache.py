"""The workspace kept per owner and project (ci_server/workspace_cache.py): the next job of
the project writes only what changed, gets exactly its own files, and never another
owner's tree. Real files, the file blob store; the job's container (which mounts the tree
read-only) is tested in tests/e2e/test_delta_uploads.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path

import pytest
import zstandard

from ci_common.trees import content_hash, record_header
from ci_server.contents import Contents, ManifestFile, encode_manifest
from ci_server.runner.workspace import ArchiveLimits, Removals
from ci_server.store.blobs_fs import FileBlobStore
from ci_server.workspace_cache import WorkspaceCache

Files = dict[str, bytes | tuple[bytes, bool]]
"""A project: path -> bytes, or (bytes, executable)."""


@pytest.fixture
async def contents(tmp_path: Path) -> AsyncIterator[Contents]:
    blobs = FileBlobStore(tmp_path / "blobs")
    await blobs.open()
    (tmp_path / "scratch").mkdir()
    yield Contents(blobs, ArchiveLimits(max_files=100, max_unpacked_bytes=10**6), tmp_path)
    await blobs.close()


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[WorkspaceCache]:
    removals = Removals()
    yield WorkspaceCache(tmp_path / "cache", size=2, removals=removals)
    await removals.aclose()


class Jobs:
    """Jobs' workspaces as JobPipeline makes them: take, assemble, (run), keep."""

    def __init__(self, contents: Contents, cache: WorkspaceCache, folder: Path) -> None:
        self.contents = contents
        self.cache = cache
        self.folder = folder
        self.count = 0
        self.manifests: dict[Path, list[ManifestFile]] = {}

    async def workspace(self, owner: str, project: str, files: Files) -> tuple[Path, int]:
        """A new job's workspace of `files`, and how many files were written for it."""
        manifest = [_entry(path, data) for path, data in files.items()]
        body = b"".join(record_header(f.hash, f.size) + _bytes(files[f.path]) for f in manifest)
        await self.contents.receive(owner, BytesIO(zstandard.ZstdCompressor().compress(body)))
        self.count += 1
        job = self.folder / f"job{self.count}"
        job.mkdir(parents=True)
        tree = job / "src"
        present = await self.cache.take(owner, project, tree)
        written = await self.contents.assemble(owner, manifest, tree, present)
        self.manifests[tree] = manifest
        return tree, written

    async def keep(self, owner: str, project: str, tree: Path) -> bool:
        """Keep the tree with its manifest file, as the job's folder holds it."""
        manifest = tree.with_name("upload")
        manifest.write_bytes(encode_manifest(self.manifests[tree]))
        return await self.cache.keep(owner, project, self.manifests[tree], tree, manifest)


def _bytes(data: bytes | tuple[bytes, bool]) -> bytes:
    return data[0] if isinstance(data, tuple) else data


def _entry(path: str, data: bytes | tuple[bytes, bool]) -> ManifestFile:
    raw = _bytes(data)
    executable = isinstance(data, tuple) and data[1]
    return ManifestFile(path, len(raw), executable, content_hash(raw))


def tree_of(root: Path) -> Files:
    """What a job finds in its workspace (files only: folders follow)."""
    found: Files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            name = path.relative_to(root).as_posix()
            mode = path.stat().st_mode & 0o777
            assert mode in (0o644, 0o755), (name, oct(mode))
            found[name] = (path.read_bytes(), mode == 0o755)
    return found


def as_found(files: Files) -> Files:
    return {p: (_bytes(d), isinstance(d, tuple) and d[1]) for p, d in sorted(files.items())}


@pytest.fixture
def jobs(contents: Contents, cache: WorkspaceCache, tmp_path: Path) -> Jobs:
    return Jobs(contents, cache, tmp_path / "workspaces")


FIRST: Files = {
    "pkg/a.py": b"a = 1\n",
    "pkg/b.py": b"b = 2\n",
    "pkg/deep/c.py": b"c = 3\n",
    "run.sh": (b"#!/bin/sh\n", True),
    "tool": (b"#!/bin/sh\necho\n", False),
    "data.txt": b"some data\n",
    "old/gone.txt": b"bye\n",
    "becomes/file.txt": b"x\n",
    "notes.txt": b"notes\n",
}


async def test_the_next_job_writes_only_what_changed_and_gets_exactly_its_files(
    jobs: Jobs,
) -> None:
    tree, written = await jobs.workspace("ann", "app", FIRST)
    assert written == len(FIRST)
    assert await jobs.keep("ann", "app", tree)

    second: Files = {
        "pkg/a.py": b"a = 10\n",  # changed
        "pkg/renamed.py": b"b = 2\n",  # pkg/b.py renamed
        "pkg/deep/c.py": b"c = 3\n",
        "run.sh": (b"#!/bin/sh\n", False),  # executable bit gone
        "tool": (b"#!/bin/sh\necho\n", True),  # executable bit new
        "data.txt": b"",  # emptied
        "becomes": b"a file where a folder was\n",
        "notes.txt/inside.txt": b"a folder where a file was\n",
        "new/dir/n.py": b"new\n",
    }  # old/gone.txt deleted, with its folder
    tree, written = await jobs.workspace("ann", "app", second)

    assert tree_of(tree) == as_found(second)
    assert not (tree / "old").exists()
    # the changed, the renamed, the emptied, the two that took another's place, the new
    assert written == 6


async def test_an_unchanged_project_writes_nothing(jobs: Jobs) -> None:
    tree, _ = await jobs.workspace("ann", "app", FIRST)
    assert await jobs.keep("ann", "app", tree)

    tree, written = await jobs.workspace("ann", "app", FIRST)

    assert written == 0
    assert tree_of(tree) == as_found(FIRST)


async def test_another_owner_never_gets_the_tree(jobs: Jobs) -> None:
    tree, _ = await jobs.workspace("ann", "app", {"secret.txt": b"ann's secret\n"})
    assert await jobs.keep("ann", "app", tree)

    bobs, written = await jobs.workspace("bob", "app", {"mine.txt": b"bob's\n"})

    assert written == 1
    assert tree_of(bobs) == as_found({"mine.txt": b"bob's\n"})
    # Ann's tree is still hers, untouched
    anns, written = await jobs.workspace("ann", "app", {"secret.txt": b"ann's secret\n"})
    assert written == 0
    assert tree_of(anns) == as_found({"secret.txt": b"ann's secret\n"})


async def test_one_job_at_a_time_has_the_tree(jobs: Jobs) -> None:
    tree, _ = await jobs.workspace("ann", "app", FIRST)
    assert await jobs.keep("ann", "app", tree)

    (first, written_first), (second, written_second) = await asyncio.gather(
        jobs.workspace("ann", "app", FIRST), jobs.workspace("ann", "app", FIRST)
    )

    assert sorted([written_first, written_second]) == [0, len(FIRST)]
    assert tree_of(first) == tree_of(second) == as_found(FIRST)
    assert await jobs.keep("ann", "app", first)
    assert not await jobs.keep("ann", "app", second)  # the one kept first stays


async def test_a_tree_missing_an_entry_is_not_kept(jobs: Jobs) -> None:
    tree, _ = await jobs.workspace("ann", "app", FIRST)
    (tree / "data.txt").unlink()  # as a cancelled job's: moved away, never back

    assert not await jobs.keep("ann", "app", tree)

    _, written = await jobs.workspace("ann", "app", FIRST)
    assert written == len(FIRST)


async def test_a_kept_tree_not_as_its_manifest_says_is_written_anew(jobs: Jobs) -> None:
    tree, _ = await jobs.workspace("ann", "app", FIRST)
    assert await jobs.keep("ann", "app", tree)
    kept = next(jobs.cache.directory.iterdir()) / "files"
    (kept / "old" / "gone.txt").unlink()  # which the next job would remove
    second = {path: data for path, data in FIRST.items() if path != "old/gone.txt"}

    tree, written = await jobs.workspace("ann", "app", second)

    assert written == len(second)
    assert tree_of(tree) == as_found(second)


async def test_the_least_recently_kept_are_evicted_beyond_the_size(jobs: Jobs) -> None:
    for project in ("one", "two", "three"):
        tree, _ = await jobs.workspace("ann", project, {f"{project}.py": b"x = 1\n"})
        assert await jobs.keep("ann", project, tree)
    await jobs.cache.removals.aclose()

    assert len(list(jobs.cache.directory.iterdir())) == 2
    _, written = await jobs.workspace("ann", "one", {"one.py": b"x = 1\n"})
    assert written == 1  # evicted
    _, written = await jobs.workspace("ann", "three", {"three.py": b"x = 1\n"})
    assert written == 0


async def test_a_size_of_zero_keeps_nothing(contents: Contents, tmp_path: Path) -> None:
    jobs = Jobs(
        contents, WorkspaceCache(tmp_path / "cache", size=0, removals=Removals()), tmp_path / "ws"
    )
    tree, _ = await jobs.workspace("ann", "app", FIRST)

    assert not await jobs.keep("ann", "app", tree)
    assert not (tmp_path / "cache").exists()


async def test_a_tree_that_cannot_be_kept_is_not_the_jobs_failure(jobs: Jobs) -> None:
    tree, _ = await jobs.workspace("ann", "app", FIRST)
    (tree.parent / "src.entry").write_text("in the way")

    assert not await jobs.keep("ann", "app", tree)


async def test_an_entry_another_worker_kept_meanwhile_is_read_from_its_manifest(
    contents: Contents, cache: WorkspaceCache, tmp_path: Path
) -> None:
    """A worker remembers the files of the entries it kept; a worker sharing the folder
    that kept another tree of the project since is not mistaken for it."""
    other = WorkspaceCache(cache.directory, size=2, removals=cache.removals)
    ours, theirs = Jobs(contents, cache, tmp_path / "a"), Jobs(contents, other, tmp_path / "b")
    tree, _ = await ours.workspace("ann", "app", FIRST)
    assert await ours.keep("ann", "app", tree)
    changed = {**FIRST, "pkg/a.py": b"a = 'changed elsewhere'\n"}
    tree, written = await theirs.workspace("ann", "app", changed)
    assert written == 1
    assert await theirs.keep("ann", "app", tree)

    tree, written = await ours.workspace("ann", "app", FIRST)

    assert written == 1  # pkg/a.py back as FIRST has it: the kept entry was read as it is
    assert tree_of(tree) == as_found(FIRST)
