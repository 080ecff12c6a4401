"""Sending a project as contents: only what the server does not have yet (ci_common/trees.py).

`snapshot` hashes the files `archive.iter_project_folders` picks (through the HashCache: an
unchanged file is not read) and builds a tree per folder. `send` asks the server, level by
level from the root, which trees and files it lacks: an unchanged folder is one hash asked,
an unchanged project one question. It then sends those in zstd batches of about
BATCH_BYTES and returns what it sent; the caller submits the root's hash.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from ci_client.archive import iter_project_folders
from ci_client.client import CIClient
from ci_client.hashcache import HashCache
from ci_common.trees import Row, content_hash, encode_rows, hash_file, record_header

READ_CHUNK = 1024 * 1024
BATCH_BYTES = 8 * 1024 * 1024
"""Raw bytes per batch (the server holds up to 64 MiB of small files a batch)."""
QUESTION_HASHES = 50_000
"""Hashes per `missing` question (the server answers up to 100,000)."""


@dataclass(slots=True)
class Snapshot:
    root: str
    trees: dict[str, bytes] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, tuple[str, int]] = field(default_factory=dict)
    """A file of each content and its size, by hash."""
    file_count: int = 0
    total_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Sent:
    files: int
    bytes: int
    """On the wire: questions and batches."""


def snapshot(root: Path, cache: HashCache) -> Snapshot:
    """The project under `root` as trees of contents (files hashed or found in `cache`)."""
    root = root.resolve()
    folders: dict[str, list[Row]] = {"": []}
    """The entries of each folder that holds a file (however deep), parents first."""
    files: dict[str, tuple[str, int]] = {}
    count = total = 0
    for folder, picked in iter_project_folders(root):
        if not picked:
            continue
        rows = _rows_of(folders, folder)
        prefix = f"{root}{os.sep}{folder}/" if folder else f"{root}{os.sep}"
        for name, status in picked:
            path = prefix + name
            size = status.st_size
            hash_ = cache.get(path, status)
            if hash_ is None:
                hash_ = hash_file(Path(path))
                cache.put(path, status, hash_)
            rows.append((name, "f", hash_, size, 1 if status.st_mode & 0o111 else 0))
            files.setdefault(hash_, (path, size))
            total += size
        count += len(picked)
    trees: dict[str, bytes] = {}
    children: dict[str, list[str]] = {}
    # Deepest first: a folder's tree names its subfolders' hashes.
    for folder in sorted(folders, key=lambda name: name.count("/") + bool(name), reverse=True):
        rows = folders[folder]
        hashes = [row[2] for row in rows]  # before encode_rows sorts them
        data = encode_rows(rows)
        hash_ = content_hash(data)
        trees[hash_] = data
        children[hash_] = hashes
        if folder:
            parent, _, name = folder.rpartition("/")
            folders[parent].append((name, "d", hash_))
    root_hash = content_hash(encode_rows(folders[""]))
    return Snapshot(root_hash, trees, children, files, count, total)


def _rows_of(folders: dict[str, list[Row]], folder: str) -> list[Row]:
    """The entries of `folder`, a new list if it is new, and one for each of its parents
    that has none yet (a folder of folders only)."""
    parts = folder.split("/")
    for depth in range(1, len(parts) + 1):
        folders.setdefault("/".join(parts[:depth]), [])
    return folders[folder]


def send(client: CIClient, snap: Snapshot) -> Sent:
    """Send the contents of `snap` the server lacks for this user; what was sent."""
    wire = 0
    needed: list[str] = []
    asked: set[str] = set()
    level = [snap.root]
    while level:
        asked.update(level)
        below: list[str] = []
        for start in range(0, len(level), QUESTION_HASHES):
            missing, sent = client.missing_contents(level[start : start + QUESTION_HASHES])
            wire += sent
            needed.extend(missing)
            for hash_ in missing:
                below.extend(h for h in snap.children.get(hash_, ()) if h not in asked)
        level = list(dict.fromkeys(below))
    for batch in _batches(snap, needed):
        with batch:
            wire += client.upload_contents(batch)
    files = sum(1 for hash_ in needed if hash_ not in snap.trees)
    return Sent(files, wire)


def _batches(snap: Snapshot, needed: list[str]) -> Iterator[BinaryIO]:
    """The needed contents as compressed batches, each in a temporary file at its start."""
    compressor = zstandard.ZstdCompressor(level=3)
    pending = list(needed)
    while pending:
        spool = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it)
        raw = 0
        with compressor.stream_writer(spool, closefd=False) as writer:
            while pending and raw < BATCH_BYTES:
                hash_ = pending.pop()
                raw += _write_record(writer, snap, hash_)
        spool.seek(0)
        yield spool  # type: ignore[misc]


def _write_record(writer: zstandard.ZstdCompressionWriter, snap: Snapshot, hash_: str) -> int:
    tree = snap.trees.get(hash_)
    if tree is not None:
        writer.write(record_header(hash_, len(tree)) + tree)
        return len(tree)
    path, size = snap.files[hash_]
    writer.write(record_header(hash_, size))
    left = size
    with Path(path).open("rb") as file:  # changed since it was hashed: the server refuses it
        while left and (chunk := file.read(min(left, READ_CHUNK))):
            writer.write(chunk)
            left -= len(chunk)
    return size
