"""A job's artifacts, from what its container left in its output folder: the JUnit report,
and the tar its exit trap packed of the files ci.toml's `artifacts` match
(collect_artifacts.py, run in the container).

Both are hostile: the tests could write anything there, whatever the packer meant to do.
They are opened without following a link, regular files only (regular_files.py); the tar
is read as a stream with checks of our own, never extracted: regular members only, each
path checked (ci_common/artifact_paths.py), no path twice, at most `max_files` files and
`max_bytes` in all (what does not fit is left out, and said). Each kept file is copied to
a file of the caller's folder named by its position, never by its path, and hashed on the
way. Blocking: run `collect` in a thread.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from ci_common.artifact_paths import safe_path
from ci_server.models import Artifact
from ci_server.runner.executor import ARTIFACTS_NAME, REPORT_NAME
from ci_server.runner.regular_files import NotRegularFile, open_regular

REPORT_ARTIFACT = "junit.xml"
"""The report's path among the artifacts; a file of the project at the same path is left
out (the report comes first)."""
COPY_CHUNK = 1024 * 1024
MAX_MEMBER_NOTES = 20
"""Members refused one by one in the log; the rest are counted (a tar of 1 GiB holds two
million members, and the server's own log lines are not bounded by CI_MAX_LOG_BYTES)."""
NOTE_NAME_CHARS = 200
"""How much of a refused member's name its note shows (a tar's names may be megabytes)."""
MAX_HEADER_BYTES = 64 * 1024
"""The most a member's long name or extended (pax) header may hold: tarfile reads one whole
into memory, and the tests could make it as big as the file."""
_LONG_HEADERS = frozenset(
    (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE)
)


class _BoundedHeaders(tarfile.TarInfo):
    """A member's header, refused before it is read when it says it is too long."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _LONG_HEADERS and self.size > MAX_HEADER_BYTES:
            raise _HeaderTooLong(
                f"a member's header of more than {MAX_HEADER_BYTES:,} bytes ({self.size:,})"
            )
        return super()._proc_member(archive)  # pyright: ignore[reportAttributeAccessIssue]


class _HeaderTooLong(tarfile.HeaderError):
    pass


@dataclass(frozen=True, slots=True)
class ArtifactLimits:
    max_files: int = 1000
    max_bytes: int = 100 * 1024**2


@dataclass
class Collected:
    """What a job's artifacts are: their listing, the file holding each one's bytes (by
    position), and what the job's log must say about those left out."""

    artifacts: list[Artifact] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Collector:
    def __init__(self, folder: Path, limits: ArtifactLimits) -> None:
        self.folder = folder
        self.limits = limits
        self.found = Collected()
        self.bytes = 0
        self.over_count = 0
        self.over_bytes = 0
        self.paths: set[str] = set()
        self.refused = 0

    def refuse(self, name: str, why: str) -> None:
        """Leave the member `name` out, saying so for the first MAX_MEMBER_NOTES."""
        self.refused += 1
        if self.refused <= MAX_MEMBER_NOTES:
            shown = name if len(name) <= NOTE_NAME_CHARS else f"{name[:NOTE_NAME_CHARS]}..."
            self.found.notes.append(f"{shown!r} {why}")

    def keep(self, path: str, source: IO[bytes], size: int) -> None:
        """Copy `size` bytes of `source` as artifact `path`, if it fits."""
        if path in self.paths:
            self.refuse(path, "is not kept twice")
            return
        if len(self.found.artifacts) >= self.limits.max_files:
            self.over_count += 1
            return
        if self.bytes + size > self.limits.max_bytes:
            self.over_bytes += 1
            return
        position = len(self.found.artifacts)
        target = self.folder / f"artifact-{position}"
        digest = hashlib.sha256()
        copied = 0
        with target.open("wb") as out:
            while copied < size and (chunk := source.read(min(COPY_CHUNK, size - copied))):
                digest.update(chunk)
                out.write(chunk)
                copied += len(chunk)
        self.bytes += copied
        self.paths.add(path)
        self.found.artifacts.append(Artifact(path, copied, digest.hexdigest(), position))
        self.found.files.append(target)

    def _open(self, output_dir: Path, name: str, refused: str) -> BinaryIO | None:
        """The job's output file `name`, if it left a regular one; a note `refused: why`
        when it is something else."""
        try:
            return open_regular(output_dir, name)
        except NotRegularFile as e:
            self.found.notes.append(f"{refused}: {e}")
            return None

    def add_report(self, output_dir: Path) -> None:
        stream = self._open(output_dir, REPORT_NAME, "the test report is not kept")
        if stream is None:
            return
        with stream:
            self.keep(REPORT_ARTIFACT, stream, _size(stream))

    def add_packed(self, output_dir: Path) -> None:
        """The files of the tar the job's exit trap packed, those that pass the checks."""
        stream = self._open(output_dir, ARTIFACTS_NAME, "the packed artifacts are not used")
        if stream is None:
            return
        with stream:
            if _size(stream) == 0:
                return
            try:
                # "r|": a stream, read once in order; nothing is extracted by tarfile.
                with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedHeaders) as tar:
                    for member in tar:
                        self._add_member(tar, member)
            except (tarfile.TarError, EOFError, OSError) as e:
                self.found.notes.append(f"the packed artifacts end early: {e}")

    def _add_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        path = safe_path(member.name)
        if path is None:
            self.refuse(member.name, "is not kept: not a safe relative path")
            return
        if not member.isreg():
            if not member.isdir():
                self.refuse(path, "is not kept: not a regular file")
            return
        data = tar.extractfile(member)
        if data is not None:
            self.keep(path, data, member.size)

    def result(self) -> Collected:
        limits = self.limits
        if self.refused > MAX_MEMBER_NOTES:
            self.found.notes.append(
                f"{self.refused - MAX_MEMBER_NOTES:,} more member(s) not kept for such reasons "
                f"({self.refused:,} in all)"
            )
        if self.over_count:
            self.found.notes.append(
                f"{self.over_count} more file(s) not kept: at most {limits.max_files:,} "
                "are kept (CI_MAX_ARTIFACT_FILES)"
            )
        if self.over_bytes:
            self.found.notes.append(
                f"{self.over_bytes} more file(s) not kept: at most {limits.max_bytes:,} bytes "
                "are kept (CI_MAX_ARTIFACT_BYTES)"
            )
        return self.found


def _size(stream: BinaryIO) -> int:
    return os.fstat(stream.fileno()).st_size


def collect(output_dir: Path, folder: Path, limits: ArtifactLimits) -> Collected:
    """The artifacts a job left in `output_dir`: its report first, then the files it packed;
    their bytes copied into `folder` (which must exist)."""
    collector = _Collector(folder, limits)
    collector.add_report(output_dir)
    collector.add_packed(output_dir)
    return collector.result()
