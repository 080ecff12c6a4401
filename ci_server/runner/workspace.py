"""Uploaded archives: checked before they are accepted, unpacked safely into a workspace.

A zip is untrusted input. It is refused when it is not a zip, has entries with absolute
paths, `..` or links, has too many entries, or would unpack past a size limit (the real
size is counted while writing, not taken from the zip's own headers).
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ci_server.models import InvalidUpload

COPY_CHUNK = 1024 * 1024
_DAMAGED_ENTRY_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
)


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_files: int = 20_000
    max_unpacked_bytes: int = 1024**3
    max_ratio: float = 200.0
    """Largest uncompressed/compressed ratio of the whole archive (zip bombs)."""


def _safe_member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The relative path the entry unpacks to, or None for a directory entry."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise InvalidUpload(f"archive entry {info.filename!r} has an absolute path")
    if ".." in path.parts:
        raise InvalidUpload(f"archive entry {info.filename!r} points outside the project")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InvalidUpload(f"archive entry {info.filename!r} is a symbolic link")
    if info.is_dir() or not path.parts:
        return None
    return path


def check_archive(path: Path, limits: ArchiveLimits) -> int:
    """Refuse an unsafe archive with InvalidUpload; return its number of files."""
    try:
        with zipfile.ZipFile(path) as archive:
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
    except zipfile.BadZipFile as e:
        raise InvalidUpload(f"upload is not a valid zip archive: {e}") from e
    return len(files)


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
            try:
                with archive.open(info) as source, target.open("wb") as sink:
                    while chunk := source.read(COPY_CHUNK):
                        budget -= len(chunk)
                        if budget < 0:
                            raise InvalidUpload(
                                f"archive unpacks to more than {limits.max_unpacked_bytes} bytes"
                            )
                        sink.write(chunk)
            except _DAMAGED_ENTRY_ERRORS as e:
                # Only reading the data finds these (bad CRC, encrypted, unknown compression...).
                raise InvalidUpload(f"archive entry {info.filename!r} cannot be read: {e}") from e
            # Readable by the unprivileged user the tests run as; executable bits survive.
            executable = (info.external_attr >> 16) & 0o111
            target.chmod(0o755 if executable else 0o644)
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
