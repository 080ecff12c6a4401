"""Uploaded archives: checked before they are accepted, unpacked safely into a workspace.

A zip is untrusted input. It is refused when it is not a zip, has entries with absolute
paths, `..` or links, has too many entries, would unpack past a size limit (the real
size is counted while writing, not taken from the zip's own headers), or is damaged:
whatever reading it raises is InvalidUpload. The check reads every entry's header but
decompresses nothing; damaged data shows only when unpacking.

A manifest (a project sent as a tree of contents, ci_server/contents.py) obeys the same
rules: its names pass `safe_relative_path` like an entry's, and `ManifestBudget` counts its
files, bytes and depth against the same ArchiveLimits. Its files are regular files or
folders by construction: a manifest has no way to say "link".
"""

from __future__ import annotations

import asyncio
import contextlib
import lzma
import os
import shutil
import stat
import zipfile
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ci_server.models import InvalidUpload

COPY_CHUNK = 1024 * 1024
ZIP_START = b"PK\x03\x04"
ZIP_STARTS = (ZIP_START, b"PK\x05\x06")
"""What an accepted archive starts with: a first entry, or the end of an empty archive. A
zip may carry anything before (zipfile reads it from its end): refusing that keeps the
manifests the server writes under a job's key (`contents.MANIFEST_START`) apart from any
zip a user can send."""
_DAMAGED_ENTRY_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,  # a compression method or zip version this Python cannot read
    RuntimeError,  # encrypted
    ValueError,  # a name that is not the UTF-8 its flag claims, a negative seek
    OSError,  # a header offset past the end of the file, a damaged bzip2 stream
)
"""What reading a damaged archive raises. Caught only around reads of the open upload
(`_refusing_damage`), so an OSError there is the archive's fault, never a full disk."""


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_files: int = 20_000
    max_unpacked_bytes: int = 1024**3
    max_ratio: float = 200.0
    """Largest uncompressed/compressed ratio of the whole archive (zip bombs)."""


MAX_DEPTH = 64
"""Most nested folders in a manifest (a zip's depth is bounded by its names' length)."""
MAX_NAME_BYTES = 255
"""The longest file or folder name in UTF-8 (Linux's NAME_MAX): no worker could write one
longer."""
MAX_PATH_BYTES = 2048
"""The longest path in a project, in UTF-8: under Linux's PATH_MAX (4096) with the folder
a worker unpacks into in front, and a bound on what a manifest's walk keeps for each
folder it has yet to read (unbounded names over a wide tree were gigabytes of paths)."""


def safe_relative_path(name: str, what: str) -> PurePosixPath:
    """The relative path `name` stands for (`\\` as `/`); InvalidUpload, naming `what`,
    if it is absolute, has a drive, `..` or a NUL, or is longer than MAX_PATH_BYTES or
    has a name longer than MAX_NAME_BYTES. It may have no parts (`""`, `"."`)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise InvalidUpload(f"{what} {name!r} has an absolute path")
    if ".." in path.parts:
        raise InvalidUpload(f"{what} {name!r} points outside the project")
    if "\0" in name:
        raise InvalidUpload(f"{what} {name[:200]!r} has a NUL character")
    check_path_length(name, what)
    if any(_utf8_longer(part, MAX_NAME_BYTES) for part in path.parts):
        raise InvalidUpload(f"{what} {name[:200]!r} has a name longer than {MAX_NAME_BYTES} bytes")
    return path


def check_path_length(name: str, what: str) -> None:
    """InvalidUpload, naming `what`, if the path `name` is longer than MAX_PATH_BYTES."""
    if _utf8_longer(name, MAX_PATH_BYTES):
        raise InvalidUpload(f"{what} {name[:200]!r}... is longer than {MAX_PATH_BYTES} bytes")


def _utf8_longer(text: str, most: int) -> bool:
    """Whether `text` is more than `most` bytes in UTF-8; a character is at most 4 (a
    manifest's 20,000 paths are checked without encoding any)."""
    return len(text) * 4 > most and len(text.encode("utf-8", "surrogatepass")) > most


def _safe_member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The relative path the entry unpacks to, or None for a directory entry."""
    path = safe_relative_path(info.filename, "archive entry")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InvalidUpload(f"archive entry {info.filename!r} is a symbolic link")
    if not path.parts or info.is_dir():  # (is_dir fails on an empty name)
        return None
    return path


_NOT_IN_PLAIN_NAMES = frozenset("/\\\0:")


def safe_entry_name(name: str) -> str:
    """A manifest's entry name if it is one safe path component (the rules of
    `safe_relative_path`, and no `/`, `\\`, `.` or empty name); InvalidUpload otherwise."""
    plain = name not in ("", ".", "..") and _NOT_IN_PLAIN_NAMES.isdisjoint(name)
    if plain and not _utf8_longer(name, MAX_NAME_BYTES):
        return name  # plainly one safe component (checked this way: 20,000 names a submit)
    path = safe_relative_path(name, "manifest entry")
    if path.parts != (name,):
        raise InvalidUpload(f"manifest entry {name[:200]!r} is not a single file or folder name")
    return name


class ManifestBudget:
    """What a manifest has added up to so far, refused with InvalidUpload as soon as it
    passes the limits a zip obeys (files, unpacked bytes) or MAX_DEPTH; also bounds the
    folders, which cost a read each, by the number of files allowed (a folder is added
    when a tree names it, before it is read)."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.files = 0
        self.folders = 0
        self.bytes = 0

    def add_folder(self, depth: int) -> None:
        self.folders += 1
        if depth > MAX_DEPTH:
            raise InvalidUpload(f"manifest nests folders deeper than {MAX_DEPTH}")
        if self.folders > self.limits.max_files:
            raise InvalidUpload(
                f"manifest has more than {self.limits.max_files} folders, the files' limit"
            )

    def add_file(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > self.limits.max_files:
            raise InvalidUpload(f"manifest has more than {self.limits.max_files} files, the limit")
        if self.bytes > self.limits.max_unpacked_bytes:
            raise InvalidUpload(
                f"manifest unpacks to more than {self.limits.max_unpacked_bytes} bytes, the limit"
            )


def check_archive(path: Path, limits: ArchiveLimits) -> int:
    """Refuse an unsafe archive with InvalidUpload; return its number of files."""
    # Opened first: a missing or unreadable upload is the server's fault, not the archive's.
    with path.open("rb") as file, _refusing_damage("upload is not a valid zip archive"):
        if file.read(len(ZIP_START)) not in ZIP_STARTS:
            raise InvalidUpload(
                "upload is not a valid zip archive: it does not start with a zip header"
            )
        file.seek(0)
        with zipfile.ZipFile(file) as archive:
            infos = archive.infolist()
            if len(infos) > limits.max_files:
                raise InvalidUpload(
                    f"archive has {len(infos)} entries, more than the limit of {limits.max_files}"
                )
            declared = sum(info.file_size for info in infos)
            compressed = sum(info.compress_size for info in infos)
            if declared > limits.max_unpacked_bytes:
                raise InvalidUpload(
                    f"archive unpacks to {declared} bytes, "
                    f"more than the limit of {limits.max_unpacked_bytes}"
                )
            if compressed and declared / compressed > limits.max_ratio:
                raise InvalidUpload(
                    f"archive compression ratio {declared / compressed:.0f} is suspicious "
                    f"(limit {limits.max_ratio:.0f}): refusing a possible zip bomb"
                )
            files = [info for info in infos if _safe_member_path(info) is not None]
            for info in files:
                _check_local_header(archive, info)
    return len(files)


@contextlib.contextmanager
def _refusing_damage(what: str) -> Iterator[None]:
    """Around reads of the upload: what a damaged archive raises is InvalidUpload."""
    try:
        yield
    except _DAMAGED_ENTRY_ERRORS as e:
        raise InvalidUpload(f"{what}: {e}") from e


def _unreadable(info: zipfile.ZipInfo) -> str:
    return f"archive entry {info.filename!r} cannot be read"


def _check_local_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Open the entry without decompressing it: its header is there, matches the directory,
    and names a method and encryption this server can read. Only its data is left unread."""
    with _refusing_damage(_unreadable(info)), archive.open(info):
        pass


def unpack_archive(path: Path, destination: Path, limits: ArchiveLimits) -> None:
    """Unpack a checked archive into the empty directory `destination`."""
    check_archive(path, limits)
    destination.mkdir(parents=True, exist_ok=False)
    root = destination.resolve()
    budget = limits.max_unpacked_bytes
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            relative = _safe_member_path(info)
            if relative is None:
                continue
            target = root.joinpath(*relative.parts)
            if not target.resolve().is_relative_to(root):
                raise InvalidUpload(f"archive entry {info.filename!r} points outside the project")
            target.parent.mkdir(parents=True, exist_ok=True)
            budget -= _copy_entry(archive, info, target, budget)
            if budget < 0:
                raise InvalidUpload(
                    f"archive unpacks to more than {limits.max_unpacked_bytes} bytes"
                )
            # Readable by the unprivileged user the tests run as; executable bits survive.
            executable = (info.external_attr >> 16) & 0o111
            target.chmod(0o755 if executable else 0o644)
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)


Ids = tuple[int, int]
"""A user's uid and gid."""


def give_to(tree: Path, uid: int, gid: int) -> None:
    """Make `tree` and everything in it belong to `uid`:`gid`, the user a job's tests run
    as, who write into their project through an overlay of it (runner/scratch.py); only
    what does not belong to them already. Links are not followed."""
    _give(os.fspath(tree), os.lstat(tree), uid, gid)


def _give(path: str, status: os.stat_result, uid: int, gid: int) -> None:
    if (status.st_uid, status.st_gid) != (uid, gid):
        os.lchown(path, uid, gid)
    if stat.S_ISDIR(status.st_mode):
        with os.scandir(path) as entries:
            for entry in entries:
                _give(entry.path, entry.stat(follow_symlinks=False), uid, gid)


def unpack_files(path: Path, destination: Path, names: Collection[str], most: int) -> None:
    """Unpack only the files of a checked archive whose paths are `names` (top-level files
    such as pyproject.toml) into the directory `destination`. A file's writing stops once
    it is longer than `most` bytes: whoever reads it bounded sees that it is too long."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            relative = _safe_member_path(info)
            if relative is not None and len(relative.parts) == 1 and relative.name in names:
                _copy_entry(archive, info, destination / relative.name, most)


def _copy_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, most: int) -> int:
    """Write the entry's data to `target`, stopping once more than `most` bytes are
    written; return how many were."""
    written = 0
    # Errors reading the archive are its fault; errors writing (a full disk) are not.
    with _refusing_damage(_unreadable(info)):
        source = archive.open(info)
    with source, target.open("wb") as sink:
        while written <= most:
            # Only reading the data finds a bad CRC or a damaged stream.
            with _refusing_damage(_unreadable(info)):
                chunk = source.read(COPY_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            sink.write(chunk)
    return written


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class Removals:
    """Trees removed in the background: removing a workspace of 20,000 files took 4 to 8 s,
    which no job's end should wait for. `aclose` waits for those under way."""

    def __init__(self) -> None:
        self._pending: dict[asyncio.Future[None], Path] = {}

    def remove(self, path: Path) -> None:
        task = asyncio.ensure_future(asyncio.to_thread(remove_tree, path))
        self._pending[task] = path
        task.add_done_callback(self._removed)

    def _removed(self, task: asyncio.Future[None]) -> None:
        self._pending.pop(task, None)

    def under_way(self) -> set[Path]:
        return set(self._pending.values())

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending))
