"""Projects sent as contents (ci_common/trees.py): per-owner blobs, manifests, workspaces.

The client asks which contents its owner lacks (`missing`), sends those in batches
(`receive`: each blob's bytes checked against its hash), then submits the root tree's
hash. `manifest` walks that tree from the blob store under the rules zips obey
(runner/workspace.py: names, counts, sizes, depth) into the flat list of the job's files,
which the server keeps under the job's key in place of a zip (`encode_manifest`); the
worker that claims the job assembles its workspace from it (`assemble`).

Owners: a content is kept under `c.<owner>.<hash>`, so every question and every reference
is answered within one owner's contents. Knowing a hash gives nothing: another user with the
same file is told it is missing and must send it, and a tree naming a hash its owner never
sent is refused (ContentsMissing). A submit also leaves `r.<owner>.<root>` (a ref, empty),
whose age says when that project state was last used: contents_gc.py keeps what recent refs
and waiting jobs need.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import BinaryIO, NamedTuple

import zstandard

from ci_common.trees import (
    MAX_HEADER_BYTES,
    BadTree,
    TreeEntry,
    are_hashes,
    decode_tree,
    is_hash,
    new_hasher,
    parse_record_header,
)
from ci_server.models import BlobNotFound, ContentsMissing, InvalidUpload, StorageFailure
from ci_server.runner.workspace import (
    ArchiveLimits,
    Ids,
    ManifestBudget,
    check_path_length,
    give_to,
    remove_tree,
    safe_entry_name,
)
from ci_server.store.blobs import BlobStore

CONTENT_PREFIX = "c."
REF_PREFIX = "r."
SWEPT_KEY = "s.swept"
"""When a sweep (contents_gc.py) last deleted contents: seconds since the epoch, as text."""
CLOCK_SKEW = 60.0
"""How far the clocks of the hosts sharing a store may differ: a tree found whole less than
this after a sweep (by the API's clock) is not trusted (the sweep's host may be behind)."""
MANIFEST_START = b"CI-MANIFEST-1\n"
"""How the server's manifest of a job starts; no accepted zip can (workspace.ZIP_STARTS)."""
MAX_TREE_BYTES = 8 * 1024**2
"""A folder's tree: about 60,000 entries; bigger ones are refused."""
SMALL_BLOB = 1024**2
"""Blobs up to this size are stored together (`BlobStore.put_many`); larger ones each alone."""
MAX_BATCH_MEMORY = 64 * 1024**2
"""Most bytes of small blobs one batch may hold (the client sends up to 8 MiB a batch)."""
COPY_CHUNK = 1024**2
KNOWN_TREE_ENTRIES = 100_000
"""Entries of trees the API keeps decoded and checked in memory (about 20 MB), the least
recently walked dropped first: an owner's unchanged folders are not read again at their
next submit."""
MOST_TRUSTED_SECONDS = 3600.0
"""How long, at most, a tree whose files were all found stays trusted to have them."""


def content_key(owner: str, hash_: str) -> str:
    return f"{CONTENT_PREFIX}{owner}.{hash_}"


def ref_key(owner: str, root: str) -> str:
    return f"{REF_PREFIX}{owner}.{root}"


def is_upload_key(key: str) -> bool:
    """Whether `key` holds a job's upload (a zip or a manifest), not contents or refs."""
    return "." not in key


class ManifestFile(NamedTuple):
    """A file of a job's manifest (a tuple: a worker makes 20,000 of them a job)."""

    path: str
    size: int
    executable: bool
    hash: str


@dataclass(frozen=True, slots=True)
class Received:
    blobs: int
    bytes: int


@dataclass(slots=True)
class _KnownTree:
    """A tree the API walked: its entries, read from the owner's contents, their names
    checked (a hash names its bytes, so they never change), and when its files' contents
    were last all found (by Contents' clock; None: not yet)."""

    entries: list[TreeEntry]
    files_found_at: float | None = None


def encode_manifest(files: list[ManifestFile]) -> bytes:
    """A row a file, `["path", size, executable, "hash"]` as json.dumps writes it: the path
    through JSON's own (C) string encoder, the rest as they are (json.dumps per row was
    0.035 s of a 20,000-file submit)."""
    quote = encode_basestring_ascii
    rows = (f'[{quote(f.path)}, {f.size}, {int(f.executable)}, "{f.hash}"]' for f in files)
    return MANIFEST_START + "\n".join(rows).encode()


def is_manifest(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(len(MANIFEST_START)) == MANIFEST_START


def read_manifest(path: Path) -> list[ManifestFile]:
    """The files of a manifest the server wrote (its paths checked again all the same)."""
    with path.open("rb") as file:
        file.read(len(MANIFEST_START))
        # One document: a row never holds a raw newline (JSON escapes them in strings).
        rows = json.loads(b"[" + file.read().replace(b"\n", b",") + b"]")
    files = []
    safe_folders: set[str] = set()
    for name, size, executable, hash_ in rows:
        if not _is_safe_path(name, safe_folders):
            raise InvalidUpload(f"manifest entry {name!r} cannot be read")
        files.append(ManifestFile(name, int(size), bool(executable), hash_))
    if not are_hashes([file.hash for file in files]):
        raise InvalidUpload("a manifest entry's content hash cannot be read")
    return files


def _is_safe_path(path: str, safe_folders: set[str]) -> bool:
    """Whether `path` is safe names joined by `/`, not too long (as a walk makes them).
    `safe_folders` holds the folders found safe so far, which this adds to: a folder's
    names are checked once, not again for each file in it (a worker reads 20,000 paths in
    200 folders twice a job)."""
    folder, slash, name = path.rpartition("/")
    try:
        safe_entry_name(name)
        check_path_length(path, "manifest entry")
        if slash and folder not in safe_folders:
            for part in folder.split("/"):
                safe_entry_name(part)
            safe_folders.add(folder)
    except InvalidUpload:
        return False
    return True


class Contents:
    """One owner's contents in the blob store, and the rules for what refers to them."""

    def __init__(
        self,
        blobs: BlobStore,
        limits: ArchiveLimits,
        scratch: Path,
        *,
        known_trees: int = 0,
        kept_for: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`known_trees`: how many entries of trees to keep decoded in memory (the API's
        submits: KNOWN_TREE_ENTRIES). `kept_for`: how long, in seconds, the contents a
        submitted tree needs are kept after its submit (CI_CONTENT_KEEP_HOURS:
        contents_gc.py): a known tree whose files were all found is trusted to still have
        them for half that (at most MOST_TRUSTED_SECONDS), and `manifest` does not look
        them up again meanwhile, unless a sweep deleted contents since. `clock`: seconds
        since the epoch (a sweep's SWEPT_KEY is compared with it)."""
        self.blobs = blobs
        self.limits = limits
        self.scratch = scratch
        """Where large blobs of a batch wait for their put (the incoming uploads' folder)."""
        self._known_trees: OrderedDict[tuple[str, str], _KnownTree] = OrderedDict()
        """(owner, hash) -> what the API knows of the tree. Whether the owner still has
        the tree itself does not matter to a job, which needs only its files."""
        self._known_entries = 0
        self._most_known = known_trees
        self._trusted_for = min(kept_for / 2, MOST_TRUSTED_SECONDS)
        self._clock = clock

    async def missing(self, owner: str, hashes: Collection[str]) -> list[str]:
        """Those of `hashes` the owner has not uploaded, in the order asked."""
        for hash_ in hashes:
            if not is_hash(hash_):
                raise InvalidUpload(f"not a content hash: {str(hash_)[:100]!r}")
        keys = {hash_: content_key(owner, hash_) for hash_ in hashes}
        present = await self.blobs.sizes(keys.values())
        return [hash_ for hash_, key in keys.items() if key not in present]

    async def receive(self, owner: str, body: BinaryIO) -> Received:
        """Store the blobs of a batch (ci_common/trees.py's records, zstd-compressed), each
        checked against its hash: a mismatch, a damaged stream or more than the unpacked
        limit is InvalidUpload, and nothing of the batch after the bad record is kept."""
        small: list[tuple[str, bytes]] = []
        large: list[tuple[str, Path]] = []
        try:
            total = await asyncio.to_thread(self._unpack_batch, body, small, large)
            if small:
                await self.blobs.put_many([(content_key(owner, h), data) for h, data in small])
            for hash_, path in large:
                await self.blobs.put(content_key(owner, hash_), path)
        finally:
            for _, path in large:
                await asyncio.to_thread(path.unlink, missing_ok=True)
        return Received(len(small) + len(large), total)

    def _unpack_batch(
        self, body: BinaryIO, small: list[tuple[str, bytes]], large: list[tuple[str, Path]]
    ) -> int:
        budget = self.limits.max_unpacked_bytes
        in_memory = 0
        try:
            reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(body))
            while header := reader.readline(MAX_HEADER_BYTES):
                hash_, size = parse_record_header(header)
                budget -= size
                if budget < 0:
                    raise InvalidUpload(
                        f"batch unpacks to more than {self.limits.max_unpacked_bytes} bytes"
                    )
                if size <= SMALL_BLOB:
                    data = _read_exactly(reader, size)
                    _check_hash(hash_, data)
                    in_memory += size
                    if in_memory > MAX_BATCH_MEMORY:
                        raise InvalidUpload(
                            f"batch holds more than {MAX_BATCH_MEMORY} bytes of small files"
                        )
                    small.append((hash_, data))
                else:
                    large.append((hash_, self._spill(reader, hash_, size)))
        except (zstandard.ZstdError, BadTree) as e:
            raise InvalidUpload(f"not a batch of contents: {e}") from None
        return self.limits.max_unpacked_bytes - budget

    def _spill(self, reader: io.BufferedIOBase, hash_: str, size: int) -> Path:
        """A large blob's bytes into a file of its own, checked against `hash_`."""
        try:
            with tempfile.NamedTemporaryFile(dir=self.scratch, delete=False) as file:
                path = Path(file.name)
                hasher = new_hasher()
                left = size
                while left:
                    chunk = _read_exactly(reader, min(left, COPY_CHUNK))
                    hasher.update(chunk)
                    file.write(chunk)
                    left -= len(chunk)
        except OSError as e:
            raise StorageFailure(f"the server could not store the upload: {e.strerror}") from e
        if hasher.hexdigest() != hash_:
            path.unlink(missing_ok=True)
            raise InvalidUpload(f"content {hash_} does not match its hash: refused")
        return path

    async def manifest(self, owner: str, root: str) -> list[ManifestFile]:
        """The files of the owner's tree `root`, checked as a zip's entries are: bad
        names, too many files or bytes, too deep, InvalidUpload; contents the owner has
        not uploaded, ContentsMissing; a file whose size is not its content's, InvalidUpload.
        Then the root's ref (`remember`): its contents are kept CI_CONTENT_KEEP_HOURS.

        The contents of a known tree's files found less than `kept_for` / 2 ago are not
        looked up again: the ref left then keeps them, unless a sweep has deleted contents
        since (it says when: SWEPT_KEY), which a sweep that listed the blobs before that
        ref was left may have."""
        files: list[ManifestFile] = []
        unchecked: list[ManifestFile] = []
        checked_trees: list[str] = []
        now = self._clock()
        trusted_since = max(now - self._trusted_for, await self._last_sweep() + CLOCK_SKEW)
        to_check = True
        """Whether the files of the tree being walked are to be looked up."""

        def on_tree(tree: str) -> None:
            nonlocal to_check
            known = self._known_trees.get((owner, tree))
            found_at = known.files_found_at if known is not None else None
            to_check = found_at is None or found_at <= trusted_since
            if to_check:
                checked_trees.append(tree)

        def on_file(file: ManifestFile) -> None:
            files.append(file)
            if to_check:
                unchecked.append(file)

        await self.walk(owner, root, on_tree, on_file)
        await self._check_contents(owner, unchecked)
        await self.remember(owner, root)
        for tree in checked_trees:
            known = self._known_trees.get((owner, tree))
            if known is not None:
                known.files_found_at = now
        return files

    async def _last_sweep(self) -> float:
        """When a sweep last deleted contents (SWEPT_KEY), by the clock; 0 if never, or if
        trees are not trusted here anyway (no lookup then)."""
        if self._trusted_for <= 0 or not self._most_known:
            return 0.0
        try:
            said = await self.blobs.read_bytes(SWEPT_KEY, 64)
        except BlobNotFound:
            return 0.0
        try:
            return float(said or b"")
        except ValueError:  # not a sweep's: trust nothing
            return self._clock()

    async def _check_contents(self, owner: str, files: list[ManifestFile]) -> None:
        """ContentsMissing unless the owner has the content of each of `files`, of its size
        (InvalidUpload if not)."""
        keys = [content_key(owner, f.hash) for f in files]
        sizes = await self.blobs.sizes(set(keys))
        absent = sorted({f.hash for f, key in zip(files, keys, strict=True) if key not in sizes})
        if absent:
            raise ContentsMissing(absent)
        for file, key in zip(files, keys, strict=True):
            if sizes[key] != file.size:
                raise InvalidUpload(f"manifest entry {file.path!r}: its size is not its content's")

    async def walk(
        self,
        owner: str,
        root: str,
        on_tree: Callable[[str], None],
        on_file: Callable[[ManifestFile], None],
    ) -> None:
        """Visit the trees and files under `root` (the trees read from the store), under
        the limits of ManifestBudget: each tree (`on_tree`), then its files (`on_file`)."""
        if not is_hash(root):
            raise InvalidUpload(f"not a content hash: {root[:100]!r}")
        budget = ManifestBudget(self.limits)
        budget.add_folder(0)
        pending: list[tuple[str, str, int]] = [(root, "", 0)]
        while pending:
            tree, prefix, depth = pending.pop()
            on_tree(tree)
            for entry in await self._tree(owner, tree):
                path = f"{prefix}{entry.name}"  # each name checked by _tree
                check_path_length(path, "manifest entry")
                if entry.kind == "dir":
                    # Charged when named, not when read: the folders waiting to be read
                    # (and their paths in memory) stay within the limit too.
                    budget.add_folder(depth + 1)
                    pending.append((entry.hash, f"{path}/", depth + 1))
                else:
                    budget.add_file(entry.size)
                    on_file(ManifestFile(path, entry.size, entry.executable, entry.hash))

    async def _tree(self, owner: str, hash_: str) -> list[TreeEntry]:
        """The entries of the owner's tree `hash_`, each name one safe path component."""
        known = self._known_trees.get((owner, hash_))
        if known is not None:
            self._known_trees.move_to_end((owner, hash_))
            return known.entries
        entries = await self._read_tree(owner, hash_)
        for entry in entries:
            safe_entry_name(entry.name)
        self._known_trees[owner, hash_] = _KnownTree(entries)
        self._known_entries += len(entries)
        while self._known_entries > self._most_known and self._known_trees:
            _, dropped = self._known_trees.popitem(last=False)
            self._known_entries -= len(dropped.entries)
        return entries

    async def _read_tree(self, owner: str, hash_: str) -> list[TreeEntry]:
        try:
            data = await self.blobs.read_bytes(content_key(owner, hash_), MAX_TREE_BYTES)
        except BlobNotFound:
            raise ContentsMissing([hash_]) from None
        if data is None:
            raise InvalidUpload(f"tree {hash_} is larger than {MAX_TREE_BYTES} bytes")
        # Trees are checked too: a tree is content like any other, kept under its hash.
        _check_hash(hash_, data)
        try:
            return decode_tree(data)
        except BadTree as e:
            raise InvalidUpload(f"tree {hash_}: {e}") from None

    async def remember(self, owner: str, root: str) -> None:
        """Note that `root` was just submitted: its contents are kept content_keep_hours."""
        await self.blobs.put_many([(ref_key(owner, root), b"")])

    async def assemble(
        self,
        owner: str,
        files: list[ManifestFile],
        destination: Path,
        present: Collection[ManifestFile] = (),
        user: Ids | None = None,
    ) -> int:
        """Make the folder `destination`, which holds the files `present` (a tree kept from
        an earlier job: workspace_cache.py) or nothing, hold `files`: write from the owner's
        contents those not there already, remove those gone, set executable bits; how many
        files were written. StorageFailure if a content is gone. With `user` (uid, gid: the
        tests'), the tree is theirs: what this writes is given to them, and the whole tree
        if it was someone else's (the setting changed since it was kept)."""
        try:
            wanted = await asyncio.to_thread(_update_tree, destination, present, files, user)
        except OSError:  # the kept tree is not as its manifest says: write it all
            await asyncio.to_thread(_emptied, destination)
            wanted = await asyncio.to_thread(_update_tree, destination, [], files, user)
        try:
            written = await self.blobs.fetch_many(
                [(content_key(owner, f.hash), _path_in(destination, f)) for f in wanted]
            )
        except BlobNotFound as e:
            raise StorageFailure(f"a content of the job's upload is missing: {e}") from None
        if written != sum(f.size for f in wanted):
            raise StorageFailure("the job's contents are not the size its manifest says")
        await asyncio.to_thread(_set_modes, destination, wanted, user)
        return len(wanted)

    async def fetch_files(
        self, owner: str, files: list[ManifestFile], names: Collection[str], folder: Path, most: int
    ) -> None:
        """The top-level files named `names` (pyproject.toml & co.) into `folder`, those of
        at most `most` bytes (whoever reads them bounded would refuse a longer one)."""
        wanted = [f for f in files if f.path in names and f.size <= most]
        await self.blobs.fetch_many([(content_key(owner, f.hash), folder / f.path) for f in wanted])


def _read_exactly(reader: io.BufferedIOBase, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise InvalidUpload("batch ends in the middle of a content")
    return data


def _check_hash(hash_: str, data: bytes) -> None:
    if new_hasher(data).hexdigest() != hash_:
        raise InvalidUpload(f"content {hash_} does not match its hash: refused")


def _path_in(root: Path, file: ManifestFile) -> Path:
    return root.joinpath(*file.path.split("/"))


def _folders(files: Collection[ManifestFile]) -> set[str]:
    """Every folder the files are in, at every depth (`a`, `a/b` for `a/b/c.py`): each
    file's own folder, then each of those once with the folders above it (20,000 files
    are in about 200)."""
    folders: set[str] = set()
    for folder in {file.path.rpartition("/")[0] for file in files}:
        while folder and folder not in folders:  # one there has its parents there
            folders.add(folder)
            folder = folder.rpartition("/")[0]
    return folders


def _update_tree(
    root: Path,
    present: Collection[ManifestFile],
    files: Collection[ManifestFile],
    user: Ids | None,
) -> list[ManifestFile]:
    """Remove from the tree `root` (made if need be), which holds `present`, the files and
    folders `files` do not have, make the folders they add, set the executable bits that
    changed; the files whose content is still to write. Folders are 0755 and files 0644 or
    0755, as a zip's unpack makes them (readable by the user the tests run as), and with
    `user` theirs (see `Contents.assemble`)."""
    root.mkdir(exist_ok=True)
    root.chmod(0o755)
    status = root.stat()
    if user is not None and (status.st_uid, status.st_gid) != user:
        give_to(root, *user)  # a new folder, or a tree kept for another user
    before = {file.path: file for file in present}
    after = {file.path: file for file in files}
    gone = before.keys() - after.keys()
    for path in gone:
        _path_in(root, before[path]).unlink()
    if gone or len(after) != len(before):  # paths came or went: so may folders
        _update_folders(root, _folders(present), _folders(files), user)
    wanted = []
    for path, file in after.items():
        old = before.get(path)
        if old == file:
            continue
        if old is None or (old.hash, old.size) != (file.hash, file.size):
            wanted.append(file)
        else:
            _path_in(root, file).chmod(0o755 if file.executable else 0o644)
    return wanted


def _update_folders(root: Path, old: set[str], new: set[str], user: Ids | None) -> None:
    """Remove the (emptied) folders `old` has and `new` not, deepest first; make those
    only `new` has."""
    for folder in sorted(old - new, key=lambda f: f.count("/"), reverse=True):
        root.joinpath(*folder.split("/")).rmdir()
    for folder in sorted(new - old, key=lambda f: f.count("/")):
        made = root.joinpath(*folder.split("/"))
        made.mkdir()
        made.chmod(0o755)
        if user is not None:
            os.chown(made, *user)


def _emptied(root: Path) -> None:
    remove_tree(root)
    root.mkdir()


def _set_modes(root: Path, files: list[ManifestFile], user: Ids | None) -> None:
    for file in files:
        path = _path_in(root, file)
        path.chmod(0o755 if file.executable else 0o644)
        if user is not None:
            os.chown(path, *user)
