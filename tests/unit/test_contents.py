"""Contents (ci_server/contents.py): batches checked against their hashes, trees walked under
the rules zips obey, every answer within one owner's contents. On the file blob store (the
BlobStore contract covers the backends)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
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
    read_manifest,
    ref_key,
)
from ci_server.models import ContentsMissing, InvalidUpload
from ci_server.runner.workspace import MAX_DEPTH, ArchiveLimits
from ci_server.store.blobs_fs import FileBlobStore

LIMITS = ArchiveLimits(max_files=10, max_unpacked_bytes=1000)


@pytest.fixture
async def contents(tmp_path: Path) -> AsyncIterator[Contents]:
    blobs = FileBlobStore(tmp_path / "blobs")
    await blobs.open()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    yield Contents(blobs, LIMITS, scratch)
    await blobs.close()


def batch(*records: tuple[str, bytes]) -> BytesIO:
    raw = b"".join(record_header(h, len(data)) + data for h, data in records)
    return BytesIO(zstandard.ZstdCompressor().compress(raw))


def blob(data: bytes) -> tuple[str, bytes]:
    return content_hash(data), data


def file(name: str, data: bytes, executable: bool = False) -> TreeEntry:
    return TreeEntry(name, "file", content_hash(data), len(data), executable)


async def send(contents: Contents, owner: str, *blobs: bytes) -> None:
    await contents.receive(owner, batch(*(blob(data) for data in blobs)))


async def tree(contents: Contents, owner: str, entries: list[TreeEntry]) -> str:
    data = encode_tree(entries)
    await send(contents, owner, data)
    return content_hash(data)


async def test_a_tree_becomes_the_workspace_it_describes(
    contents: Contents, tmp_path: Path
) -> None:
    await send(contents, "ann", b"print(1)\n", b"#!/bin/sh\n", b"")
    sub = await tree(contents, "ann", [file("run.sh", b"#!/bin/sh\n", True), file("e", b"")])
    root = await tree(contents, "ann", [file("a.py", b"print(1)\n"), TreeEntry("bin", "dir", sub)])

    files = await contents.manifest("ann", root)
    assert await contents.assemble("ann", files, tmp_path / "ws") == 3

    assert (tmp_path / "ws" / "a.py").read_bytes() == b"print(1)\n"
    assert (tmp_path / "ws" / "bin" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "ws" / "bin" / "e").read_bytes() == b""
    assert (tmp_path / "ws" / "a.py").stat().st_mode & 0o777 == 0o644


def owners(tree: Path) -> dict[str, tuple[int, int]]:
    return {
        path.relative_to(tree).as_posix(): (path.stat().st_uid, path.stat().st_gid)
        for path in [tree, *tree.rglob("*")]
    }


async def test_a_workspace_is_written_as_the_tests_user_s(
    contents: Contents, tmp_path: Path
) -> None:
    """The tests write into their project through an overlay of the workspace (scratch.py):
    every file and folder written is theirs; a kept tree's files are left as they are,
    unless the tree was kept as another user's (the setting changed): then all of it."""
    await send(contents, "ann", b"a", b"b", b"c")
    sub = await tree(contents, "ann", [file("a", b"a")])
    first = await contents.manifest(
        "ann", await tree(contents, "ann", [TreeEntry("s", "dir", sub)])
    )
    ws = tmp_path / "ws"
    await contents.assemble("ann", first, ws, user=(1000, 1001))
    assert set(owners(ws).values()) == {(1000, 1001)}

    new = await tree(contents, "ann", [file("b", b"b")])
    root = await tree(contents, "ann", [TreeEntry("s", "dir", sub), TreeEntry("n", "dir", new)])
    second = await contents.manifest("ann", root)
    assert await contents.assemble("ann", second, ws, first, user=(1000, 1001)) == 1
    assert owners(ws) == dict.fromkeys([".", "s", "s/a", "n", "n/b"], (1000, 1001))

    assert await contents.assemble("ann", second, ws, second, user=(1002, 1002)) == 0
    assert set(owners(ws).values()) == {(1002, 1002)}


async def test_contents_are_per_owner(contents: Contents) -> None:
    await send(contents, "ann", b"secret")
    root = await tree(contents, "ann", [file("s.txt", b"secret")])

    assert await contents.missing("ann", [content_hash(b"secret"), root]) == []
    assert await contents.missing("bob", [content_hash(b"secret"), root]) == [
        content_hash(b"secret"),
        root,
    ]
    with pytest.raises(ContentsMissing):
        await contents.manifest("bob", root)
    # Bob's own tree naming Ann's content: still missing for him.
    bobs = await tree(contents, "bob", [file("s.txt", b"secret")])
    with pytest.raises(ContentsMissing):
        await contents.manifest("bob", bobs)


async def test_a_content_that_does_not_match_its_hash_is_refused(contents: Contents) -> None:
    with pytest.raises(InvalidUpload, match="does not match its hash"):
        await contents.receive("ann", batch((content_hash(b"truth"), b"a lie")))
    assert await contents.missing("ann", [content_hash(b"truth")]) == [content_hash(b"truth")]


@pytest.mark.parametrize(
    "body",
    [
        BytesIO(b"not zstd at all"),
        BytesIO(zstandard.ZstdCompressor().compress(b"nohash 12\n")),
        BytesIO(zstandard.ZstdCompressor().compress(record_header("a" * 64, 50) + b"short")),
        batch(blob(b"x" * 1001)),  # more than the unpacked limit
    ],
)
async def test_a_damaged_or_oversized_batch_is_refused(contents: Contents, body: BytesIO) -> None:
    with pytest.raises(InvalidUpload):
        await contents.receive("ann", body)


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\\b", "/etc", "c:x", "nul\0"])
async def test_a_tree_with_an_unsafe_name_is_refused(contents: Contents, name: str) -> None:
    await send(contents, "ann", b"x")
    root = await tree(contents, "ann", [file(name, b"x")])
    with pytest.raises(InvalidUpload):
        await contents.manifest("ann", root)


SAFE = [ManifestFile(path, 1, False, "a" * 64) for path in ("a/x", "a/b/y", "z")]


def test_a_manifest_is_read_back_as_written(tmp_path: Path) -> None:
    (tmp_path / "manifest").write_bytes(encode_manifest(SAFE))
    assert read_manifest(tmp_path / "manifest") == SAFE


@pytest.mark.parametrize(
    "path", ["/a", "a//x", "a/", "a/../x", "a/b/../y", "..", "a/./x", "a\\b/x"]
)
def test_a_manifest_naming_an_unsafe_path_is_refused(tmp_path: Path, path: str) -> None:
    """Also after safe files in the folders it shares (their names were checked once)."""
    unsafe = ManifestFile(path, 1, False, "a" * 64)
    (tmp_path / "manifest").write_bytes(encode_manifest([*SAFE, unsafe]))
    with pytest.raises(InvalidUpload):
        read_manifest(tmp_path / "manifest")


@pytest.mark.parametrize("hash_", ["A" * 64, "a" * 63, "a" * 65, "g" * 64, "\u00e9" * 64])
def test_a_manifest_naming_a_hash_that_is_not_one_is_refused(tmp_path: Path, hash_: str) -> None:
    bad = ManifestFile("b/y", 1, False, hash_)
    (tmp_path / "manifest").write_bytes(encode_manifest([*SAFE, bad]))
    with pytest.raises(InvalidUpload, match="content hash cannot be read"):
        read_manifest(tmp_path / "manifest")


async def test_trees_that_pass_the_limits_are_refused(contents: Contents) -> None:
    await send(contents, "ann", b"x", b"y" * 600)
    many = await tree(contents, "ann", [file(f"f{n}", b"x") for n in range(11)])
    big = await tree(contents, "ann", [file("a", b"y" * 600), file("b", b"y" * 600)])
    # One folder named many times: counted every time (no exponential walk either).
    folder = await tree(contents, "ann", [file("a", b"x"), file("b", b"x")])
    fanned = await tree(contents, "ann", [TreeEntry(f"d{n}", "dir", folder) for n in range(6)])
    deep = await tree(contents, "ann", [file("a", b"x")])
    for n in range(MAX_DEPTH + 1):
        deep = await tree(contents, "ann", [TreeEntry(f"d{n}", "dir", deep)])
    lying = await tree(contents, "ann", [TreeEntry("a", "file", content_hash(b"x"), 5)])

    for root, message in [
        (many, "more than 10 files"),
        (big, "more than 1000 bytes"),
        (fanned, "more than 10 files"),
        (lying, "its size is not its content's"),
    ]:
        with pytest.raises(InvalidUpload, match=message):
            await contents.manifest("ann", root)
    roomy = Contents(contents.blobs, ArchiveLimits(max_files=1000), contents.scratch)
    with pytest.raises(InvalidUpload, match="deeper than"):
        await roomy.manifest("ann", deep)


async def test_a_tree_not_in_the_canonical_encoding_is_refused(contents: Contents) -> None:
    entries = b'{"format":"ci-tree-1","entries":[["b","d","%s"],["a","d","%s"]]}' % (
        b"a" * 64,
        b"a" * 64,
    )
    twice = (
        encode_tree([file("a", b"x")]).replace(b"]]}", b"],")
        + encode_tree([file("a", b"x")]).split(b'"entries":[')[1]
    )
    # A name that is a lone surrogate: JSON allows it, UTF-8 cannot hold it (it was a 500).
    surrogate = b'{"format":"ci-tree-1","entries":[["\\ud800","f","%s",1,0]]}' % (b"a" * 64)
    for data in (entries, b"[]", b"\xff", twice, surrogate):
        await send(contents, "ann", data)
        with pytest.raises(InvalidUpload):
            await contents.manifest("ann", content_hash(data))


class CountingReads:
    """The blob store's `read_bytes`, counted: how many trees a walk read."""

    def __init__(self, contents: Contents) -> None:
        self.reads = 0
        self._read_bytes = contents.blobs.read_bytes
        contents.blobs.read_bytes = self  # type: ignore[method-assign]

    async def __call__(self, key: str, most: int) -> bytes | None:
        self.reads += 1
        return await self._read_bytes(key, most)


async def test_a_tree_naming_more_folders_than_allowed_is_refused_before_it_is_walked(
    contents: Contents,
) -> None:
    # A fan-out of hashes: one tree naming 1,000 folders (each the same empty one). Every
    # folder named is charged when its tree is read, not when it is visited: the walk
    # neither reads nor queues past the limit (queued paths were unbounded in memory).
    roomy = Contents(contents.blobs, ArchiveLimits(max_files=10), contents.scratch)
    empty = await tree(roomy, "ann", [])
    wide = await tree(roomy, "ann", [TreeEntry(f"d{n:04}", "dir", empty) for n in range(1000)])
    reads = CountingReads(roomy)

    with pytest.raises(InvalidUpload, match="more than 10 folders"):
        await roomy.manifest("ann", wide)
    assert reads.reads == 1


@pytest.mark.parametrize("name", ["x" * 256, "é" * 128], ids=["ascii", "two-byte"])
async def test_a_name_longer_than_a_file_system_allows_is_refused(
    contents: Contents, name: str
) -> None:
    # Unbounded names multiplied every queued path below them (an 8 MiB name over a tree
    # of 100,000 folders: 800 GB); a worker could not have written them anyway.
    await send(contents, "ann", b"x")
    root = await tree(contents, "ann", [file(name, b"x")])
    with pytest.raises(InvalidUpload, match="longer than 255 bytes"):
        await contents.manifest("ann", root)


async def test_a_path_longer_than_the_limit_is_refused(contents: Contents) -> None:
    roomy = Contents(contents.blobs, ArchiveLimits(), contents.scratch)
    await send(roomy, "ann", b"x")
    deep = await tree(roomy, "ann", [file("f", b"x")])
    for n in range(10):  # 10 folders of 250 characters: a path of 2,500
        deep = await tree(roomy, "ann", [TreeEntry(f"{n}" * 250, "dir", deep)])
    with pytest.raises(InvalidUpload, match="longer than 2048 bytes"):
        await roomy.manifest("ann", deep)


async def test_trees_walked_before_are_not_read_again_and_stay_their_owners(
    tmp_path: Path,
) -> None:
    """The API keeps trees it walked decoded (a hash names its bytes): an unchanged folder
    is not read again at the next submit; another owner naming the same tree still needs it
    and its files among their own contents."""
    blobs = FileBlobStore(tmp_path / "blobs")
    await blobs.open()
    contents = Contents(blobs, LIMITS, tmp_path, known_trees=100)
    await send(contents, "ann", b"a", b"b")
    sub = await tree(contents, "ann", [file("a.txt", b"a")])
    first = await tree(contents, "ann", [TreeEntry("sub", "dir", sub), file("b.txt", b"b")])
    second = await tree(contents, "ann", [TreeEntry("sub", "dir", sub)])
    reads = CountingReads(contents)

    await contents.manifest("ann", first)
    assert reads.reads == 2
    files = await contents.manifest("ann", second)
    assert [f.path for f in files] == ["sub/a.txt"]
    assert reads.reads == 3  # the new root only

    with pytest.raises(ContentsMissing):
        await contents.manifest("bob", second)
    await send(contents, "bob", encode_tree([TreeEntry("sub", "dir", sub)]))
    with pytest.raises(ContentsMissing):
        await contents.manifest("bob", second)  # his own root, but not ann's folder
    await blobs.close()


class CountingLookups:
    """The blob store's `sizes`, counted: how many contents a submit looked up."""

    def __init__(self, contents: Contents) -> None:
        self.looked_up = 0
        self._sizes = contents.blobs.sizes
        contents.blobs.sizes = self  # type: ignore[method-assign]

    async def __call__(self, keys: Collection[str]) -> dict[str, int]:
        self.looked_up += len(keys)
        return await self._sizes(keys)


async def test_the_files_of_a_tree_found_recently_are_not_looked_up_again(
    tmp_path: Path,
) -> None:
    """A known tree whose files were all found is trusted to have them for half the time
    contents are kept after a submit (the submit's ref keeps them): a resubmit with one
    folder changed looks up that folder's files only. Past that time it looks them all up
    again, and a content gone meanwhile is missing."""
    blobs = FileBlobStore(tmp_path / "blobs")
    await blobs.open()
    now = [10_000.0]
    contents = Contents(
        blobs, LIMITS, tmp_path, known_trees=100, kept_for=3600, clock=lambda: now[0]
    )
    await send(contents, "ann", b"a", b"b", b"c")
    same = await tree(contents, "ann", [file("a.txt", b"a"), file("b.txt", b"b")])
    first = await tree(contents, "ann", [TreeEntry("same", "dir", same), file("c", b"c")])
    second = await tree(contents, "ann", [TreeEntry("same", "dir", same), file("c", b"b")])
    lookups = CountingLookups(contents)

    await contents.manifest("ann", first)
    assert lookups.looked_up == 3
    assert await blobs.exists(ref_key("ann", first))  # what keeps them
    now[0] += 1799
    files = await contents.manifest("ann", second)
    assert [f.path for f in files] == ["c", "same/a.txt", "same/b.txt"]
    assert lookups.looked_up == 3 + 1  # the root's own file only

    await blobs.delete(content_key("ann", content_hash(b"a")))
    now[0] += 1  # half of kept_for since `same`'s files were found
    with pytest.raises(ContentsMissing):
        await contents.manifest("ann", second)
    await blobs.close()


async def test_a_sweep_that_deleted_contents_ends_the_trust(tmp_path: Path) -> None:
    """A sweep that listed the blobs before a submit's ref was left may delete what the
    submit found: it says when it deleted contents, and trees found before (or less than
    CLOCK_SKEW after: hosts' clocks differ) are looked up again."""
    blobs = FileBlobStore(tmp_path / "blobs")
    await blobs.open()
    now = [10_000.0]
    contents = Contents(
        blobs, LIMITS, tmp_path, known_trees=100, kept_for=3600, clock=lambda: now[0]
    )
    await send(contents, "ann", b"a")
    root = await tree(contents, "ann", [file("a.txt", b"a")])
    await contents.manifest("ann", root)
    await blobs.delete(content_key("ann", content_hash(b"a")))
    # Said 30 s before the submit found it, by a host whose clock is behind the API's.
    await blobs.put_many([(SWEPT_KEY, b"9970.0")])
    now[0] += 10
    with pytest.raises(ContentsMissing):
        await contents.manifest("ann", root)
    await blobs.close()
